"""The reference router forks its children from a zygote (``refimpl/child/zygote.py``) once that
has done the child's imports: to everything outside the router, a forked child must look and
behave as one started with ``Popen`` (the router is its parent, which reaps it; its command line
and environment in /proc are its own; a session of its own), and without the zygote the router
starts its children as before."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

import conformance.routers
from conformance.routers import Target
from fixtures.procs import children_of, cmdline, is_helper, wait_gone

pytestmark = pytest.mark.live
READY = r"^\[zygote\] ready: children are forked from pid (\d+)$"
SPAWNED = r"^\[router\] (forked|started) {model} \(pid (\d+)\) on port (\d+): (.*)$"


class Router(conformance.routers.Router):
    """The reference router (``--models-max 2``), with what these tests read in its log."""

    def __init__(self, tmp_path: Path, models: Path) -> None:
        super().__init__(Target(None), ["--models-dir", str(models), "--models-max", "2"],
                         tmp_path / "router.log")

    def wait_log(self, pattern: str, after: int = 0,
                 timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            self.log()  # flushed
            found = list(re.finditer(pattern, self.log_path.read_text(errors="replace"),
                                     re.M))[after:]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{self.log()}"
            time.sleep(0.02)

    def load(self, model: str, after: int = 0) -> tuple[str, int, int, str]:
        """Load ``model``; how its child came to be, its pid, port and command line."""
        r = self.client.post("/models/load", json={"model": model})
        assert r.status_code == 200, r.text
        self.wait_status(model, "loaded")
        m = self.wait_log(SPAWNED.format(model=re.escape(model)), after)
        return m[1], int(m[2]), int(m[3]), m[4]


@pytest.fixture
def router(tmp_path: Path, tiny_models: Any) -> Iterator[Router]:
    pytest.importorskip("llama_cpp")
    r = Router(tmp_path, tiny_models.root)
    try:
        yield r
    finally:
        assert not r.stop(), "a child outlived its router"


def zygote_of(router: Router) -> int:
    pid = int(router.wait_log(READY)[1])
    assert psutil.Process(pid).ppid() == router.proc.pid
    assert is_helper(pid)
    assert pid not in children_of(router.proc.pid), "a helper counted as a child with a model"
    assert pid in children_of(router.proc.pid, helpers=True)
    return pid


def test_a_forked_child_looks_like_a_started_one(router: Router, tiny_models: Any) -> None:
    zygote_of(router)
    how, pid, port, command = router.load("tiny-xs")
    assert how == "forked", router.log()
    child = psutil.Process(pid)
    assert child.ppid() == router.proc.pid  # re-parented to the router, a child subreaper
    assert os.getsid(pid) == pid  # a session of its own, as start_new_session gives
    words = [w for w in cmdline(pid) if w]
    assert " ".join(words) == command  # the log quotes it as shlex.join; no quoting needed here
    assert str(tiny_models["tiny-xs"].path) in words and words[-2:] == ["--alias", "tiny-xs"]
    key = child.environ()["LLAMA_API_KEY"]  # its own key, in its own environment
    assert child.environ()["LLAMA_SERVER_ROUTER_PORT"] == str(router.port)
    straight = httpx.post(f"http://127.0.0.1:{port}/tokenize", json={"content": "hi"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert straight.status_code == 200, straight.text
    assert children_of(router.proc.pid) == {pid}


def test_a_forked_child_that_dies_is_seen_and_reaped(router: Router) -> None:
    zygote_of(router)
    how, pid, _port, _command = router.load("tiny-xs")
    assert how == "forked", router.log()
    os.kill(pid, signal.SIGKILL)
    router.wait_status("tiny-xs", "unloaded")
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}"):  # reaped by the router: not even a zombie is left
        assert time.monotonic() < deadline, f"{pid}: {psutil.Process(pid).status()}"
        time.sleep(0.02)
    how, again, _port, _command = router.load("tiny-xs", after=1)
    assert how == "forked" and again != pid


def test_without_its_zygote_the_router_starts_children(router: Router) -> None:
    zygote = zygote_of(router)
    os.kill(zygote, signal.SIGKILL)
    assert not wait_gone([zygote], timeout=30)
    how, pid, _port, _command = router.load("tiny-xs")
    assert how == "started", router.log()
    assert router.client.post("/v1/chat/completions", json={
        "model": "tiny-xs", "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert children_of(router.proc.pid) == {pid}


def test_the_zygote_ends_with_the_router(router: Router) -> None:
    zygote = zygote_of(router)
    router.load("tiny-xs")
    router.proc.send_signal(signal.SIGTERM)
    router.proc.wait(30)
    assert not wait_gone([zygote], timeout=10)
