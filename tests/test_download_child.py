"""The download child on its own, as a router sees it: a real process, its stdout parsed with the
router's protocol reader, its stdin the router's end; the hub is the local one on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fixtures.hub import MODEL_SHARDED, MODEL_VISION, MODEL_XS, REPO_XS, LocalHub
from fixtures.procs import popen
from refimpl.cache import list_cached
from refimpl.core.protocol import (EXIT_COMMAND, DownloadProgress, DownloadResult, LineReader,
                                   parse_line)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    with LocalHub() as running:
        yield running


class DownloadChild:
    def __init__(self, hub: LocalHub, cache: Path, model: str) -> None:
        env = dict(os.environ, **hub.env(), LLAMA_CACHE=str(cache), LLAMA_SERVER_ROUTER_PORT="1",
                   LLAMA_SERVER_CHILD_MODE="download", LLAMA_ARG_HF_REPO=model)
        self.proc: subprocess.Popen[bytes] = popen(
            [sys.executable, "-m", "refimpl.child"], env=env, cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self.messages: list[tuple[float, object]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        reader = LineReader()
        assert self.proc.stdout is not None
        while data := os.read(self.proc.stdout.fileno(), 65536):
            for line in reader.feed(data):
                self.messages.append((time.monotonic(), parse_line(line)))

    def wait_for(self, kind: type, timeout: float = 60.0) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for _, m in self.messages if isinstance(m, kind)]
            if found:
                return found[0]
            assert self.proc.poll() is None or self._reader.is_alive() or found, "child died"
            time.sleep(0.02)
        raise AssertionError(f"no {kind.__name__} in {timeout} s: {self.messages}")

    def all_output(self, timeout: float = 15.0) -> list[object]:
        """Every message, once the child's stdout has reached EOF (its exit does not mean the
        reader has read its last line: a busy machine showed it)."""
        self._reader.join(timeout)
        assert not self._reader.is_alive(), "the child's stdout is still open"
        return [m for _, m in self.messages]

    def progress_times(self) -> list[float]:
        return [t for t, m in self.messages if isinstance(m, DownloadProgress)]

    def exit(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(EXIT_COMMAND)
        self.proc.stdin.flush()
        return self.proc.wait(timeout=15)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


Start = Callable[[str], DownloadChild]


@pytest.fixture
def child(hub: LocalHub, tmp_path: Path) -> Iterator[Start]:
    started: list[DownloadChild] = []

    def start(model: str) -> DownloadChild:
        started.append(DownloadChild(hub, tmp_path / "cache", model))
        return started[-1]

    yield start
    for c in started:
        c.close()
    for repo in (None, *hub.repos):
        hub.set_throttle(None, repo=repo)
        hub.set_fault(None, repo=repo)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file()
                  and (p.suffix in (".gguf", ".incomplete") or "blobs" in p.parts))


@pytest.mark.parametrize("model", [MODEL_XS, MODEL_VISION, MODEL_SHARDED])
def test_download_finishes_then_waits_for_the_exit_command(child: Start, tmp_path: Path,
                                                           model: str) -> None:
    c = child(model)
    result = c.wait_for(DownloadResult)
    assert result == DownloadResult(True)
    with pytest.raises(subprocess.TimeoutExpired):  # it waits for the router's exit command
        c.proc.wait(timeout=0.3)
    assert c.exit() == 0
    cached = [m for m in list_cached(tmp_path / "cache") if m.name == model]
    assert len(cached) == 1 and all(p.is_file() for p in cached[0].files)
    if model == MODEL_VISION:
        assert cached[0].mmproj is not None and cached[0].mmproj.is_file()


def test_progress_is_throttled_and_steady(child: Start,
                                          hub: LocalHub) -> None:
    hub.set_throttle(192 * 1024, repo=REPO_XS)
    c = child(MODEL_XS)
    c.wait_for(DownloadResult)
    times = c.progress_times()
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 5 and min(gaps) >= 0.095 and max(gaps) <= 1.0, gaps
    c.exit()


@pytest.mark.parametrize("how", ["exit-command", "stdin-eof"])
def test_cancel_stops_the_transfer_and_leaves_no_file(child: Start, hub: LocalHub,
                                                      tmp_path: Path, how: str) -> None:
    hub.set_throttle(32 * 1024, repo=REPO_XS)  # about 18 s for the whole file
    c = child(MODEL_XS)
    c.wait_for(DownloadProgress)
    deadline = time.monotonic() + 30
    while not leftovers(tmp_path / "cache"):  # a partial file to leave nothing of
        assert time.monotonic() < deadline, "no partial file while downloading"
        time.sleep(0.02)
    started = time.monotonic()
    assert c.proc.stdin is not None
    if how == "exit-command":
        c.proc.stdin.write(EXIT_COMMAND)
        c.proc.stdin.flush()
    else:
        c.proc.stdin.close()
    assert c.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5.0, "the transfer did not stop"
    assert DownloadResult(False) in c.all_output()
    assert leftovers(tmp_path / "cache") == []
    assert list_cached(tmp_path / "cache") == []


@pytest.mark.parametrize("model, fault", [(MODEL_XS, "break-half"),
                                          ("tiny/no-such-GGUF:F16", None),
                                          ("../etc:F16", None)])
def test_failure_is_reported_and_leaves_no_file(child: Start, hub: LocalHub, tmp_path: Path,
                                                model: str, fault: str | None) -> None:
    if fault:
        hub.set_fault(fault, repo=REPO_XS)
    c = child(model)
    assert c.wait_for(DownloadResult, timeout=60) == DownloadResult(False)
    assert c.exit() == 0
    assert leftovers(tmp_path / "cache") == []
