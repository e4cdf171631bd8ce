"""Z16: stopping or killing a child that is already dead signals nothing.

A child crashes and is reaped; then the router unloads it (an exit command, then a kill after the
stop timeout). Its pid is no longer ours: it may belong to another process by now, and a pid <= 0
would signal a whole process group. Every ``os.kill`` is recorded instead of sent.
"""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import pytest

from refimpl.core.protocol import EXIT_COMMAND
from refimpl.router.processes import ChildProcess

CRASH = [sys.executable, "-c", "import sys; sys.exit(3)"]


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every signal the code under test sends, recorded and not sent."""
    sent: list[tuple[int, int]] = []

    def record(pid: int, sig: int) -> None:
        sent.append((pid, sig))

    monkeypatch.setattr(os, "kill", record)
    return sent


def test_unloading_a_crashed_child_signals_nothing(signals: list[tuple[int, int]]) -> None:
    async def crash_then_unload() -> int:
        child = ChildProcess.start(CRASH, dict(os.environ), 0)
        code = await child.wait()  # the crash, as the driver sees it: reaped
        with pytest.raises(BrokenPipeError):  # the exit command: the driver's _send_exit
            await child.write_stdin(EXIT_COMMAND)  # takes this as "already gone"
        child.kill()  # the stop timeout's kill
        child.kill()
        return code

    assert anyio.run(crash_then_unload) == 3
    assert signals == []


class NoProcess:
    """Stands for a ``Popen`` whose pid is not a child's: not started, or a bad value."""

    returncode = None

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def kill(self) -> None:
        os.kill(self.pid, 9)


def test_a_child_with_no_real_pid_is_never_signalled(signals: list[tuple[int, int]]) -> None:
    for pid in (0, -1):
        ChildProcess(NoProcess(pid), 0).kill()  # type: ignore[arg-type]
    assert signals == []


def test_a_live_child_is_killed(signals: list[tuple[int, int]],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as process:
        ChildProcess(process, 0).kill()
        assert signals == [(process.pid, 9)]
        monkeypatch.undo()  # os.kill is real again: now kill it for real
        process.kill()
