"""Z13: the child's protocol lines are atomic when several threads announce at once.

A real pipe, many threads writing through one :class:`Announcer` at the same moment (the loader
thread's progress and the event loop's state changes, many times over), and a reader on the other
end: every line read back must parse whole, as the message that was sent, in each thread's order.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Iterator

import pytest

from refimpl.child.announcer import Announcer
from refimpl.core.protocol import (DownloadProgress, LineReader, LogLine, Progress, Rejection,
                                   LoadingState, parse_line)

THREADS = 16
MESSAGES = 500  # per thread


def message(thread: int, seq: int) -> LoadingState:
    """A message that says who sent it; long enough that a torn write has room to tear."""
    return LoadingState(Progress(("tensors", f"thread-{thread}", "x" * 150), f"{thread}:{seq}",
                                 seq / MESSAGES))


@pytest.fixture
def eager_thread_switches() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so that writes race for real."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_lines_from_many_threads_arrive_whole_and_in_order(eager_thread_switches: None) -> None:
    read_fd, write_fd = os.pipe()
    announcer = Announcer(write_fd)
    received: list[bytes] = []

    def read_all() -> None:
        reader = LineReader()
        while chunk := os.read(read_fd, 65536):
            received.extend(line for line in reader.feed(chunk) if isinstance(line, bytes))
        received.extend(line for line in reader.finish() if isinstance(line, bytes))

    start = threading.Barrier(THREADS)

    def announce(thread: int) -> None:
        start.wait()
        for seq in range(MESSAGES):
            announcer.send(message(thread, seq))

    reader = threading.Thread(target=read_all)
    reader.start()
    writers = [threading.Thread(target=announce, args=(t,)) for t in range(THREADS)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    os.close(write_fd)
    reader.join()
    os.close(read_fd)

    parsed = [parse_line(line) for line in received]
    torn = [p for p in parsed if isinstance(p, (LogLine, Rejection))]
    assert not torn, f"{len(torn)} of {len(parsed)} lines torn, e.g. {torn[0]!r}"[:500]
    by_thread: dict[int, list[int]] = {}
    for p in parsed:
        assert isinstance(p, LoadingState) and p.progress is not None
        thread, seq = map(int, p.progress.current.split(":"))
        assert p == message(thread, seq)
        by_thread.setdefault(thread, []).append(seq)
    assert by_thread == {t: list(range(MESSAGES)) for t in range(THREADS)}


def test_a_silent_announcer_writes_nothing() -> None:
    announcer = Announcer.silent()
    assert not announcer.active
    announcer.send(DownloadProgress("u", 1, 2))  # no file descriptor: nothing to write to
