"""SIGKILL of the router leaves no child behind: every child dies with it (``PR_SET_PDEATHSIG``,
``refimpl/router/processes.py``), within 2 s, whatever it is doing and whether or not it would
notice the router's end by itself.

A SIGKILLed router cannot stop its children; a real child notices stdin EOF and exits, but a
child that ignores EOF (the fake ``hang-on-exit``) would live on, re-parented to init, if only
the death signal did not end it. Children are killed while loading and while streaming, real ones
(``refimpl.child``) and fake ones (``fixtures/fake_child.py``), and a download child mid-download.
The test waits for the children's exits themselves (a pidfd each, ``fixtures.procs.wait_gone``),
for 2 s at most: not for init to reap them, which here takes about 2 s more.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs without types-psutil
import pytest

from conformance.routers import Router, Target
from fixtures.hub import MODEL_XS, REPO_XS, LocalHub
from fixtures.procs import is_helper, wait_gone

pytestmark = pytest.mark.live

BOUND = 2.0  # seconds from the router's death to its last child's
FAKE = "{python} -m fixtures.fake_child --faults-from-name --fault-seconds 60"
# Fakes that ignore their exit command and stdin EOF: only the death signal ends them.
FAKE_LOADING, FAKE_STREAMING = "hang-on-exit+slow-load", "hang-on-exit+slow-stream"
NO_STOP = {"2": -100, "260": -100}  # no </s>, no <|im_end|>: a real child talks to max_tokens

Start = Callable[..., Router]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    routers: list[Router] = []

    def run(args: list[str], child_cmd: str | None = None,
            env: dict[str, str] | None = None) -> Router:
        target = Target(None, child_cmd, env=tuple((env or {}).items()))
        routers.append(Router(target, [*args, "--offline"] if env is None else args,
                              tmp_path / f"router-{len(routers)}.log"))
        return routers[-1]

    yield run
    leftovers = [pid for r in routers for pid in r.stop()]
    assert not leftovers, f"children outlived their router: {leftovers}"


def children(router: Router, count: int, timeout: float = 60.0) -> list[psutil.Process]:
    """The router's descendants, once ``count`` of them are children with a model (its
    helpers, the reference router's zygote, are among those returned: they must die too)."""
    deadline = time.monotonic() + timeout
    while True:
        found = psutil.Process(router.proc.pid).children(recursive=True)
        models = [p for p in found if not is_helper(p.pid)]
        if len(models) >= count:
            return list(found)
        assert time.monotonic() < deadline, f"{len(models)} children, wanted {count}"
        time.sleep(0.02)


def stream_started(router: Router, model: str, max_tokens: int) -> threading.Thread:
    """A streamed chat for ``model`` on a thread, returned once its first chunk has come (a
    real tiny-m takes about 15 s for 400 tokens, a slow-stream fake 0.2 s a chunk)."""
    first = threading.Event()
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "logit_bias": NO_STOP,
            "messages": [{"role": "user", "content": "count"}]}

    def run() -> None:
        try:
            with httpx.Client(base_url=router.url, timeout=httpx.Timeout(120, connect=5)) as c, \
                    c.stream("POST", "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        first.set()
        except httpx.HTTPError:
            pass  # the router dies under it

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert first.wait(60), f"no chunk of {model} in 60 s\n{router.log()}"
    return thread


def kill_router_and_wait(router: Router, procs: list[psutil.Process],
                         stream: threading.Thread | None = None) -> None:
    """SIGKILL the router (while ``stream`` is still going); every child must be gone within
    BOUND seconds."""
    pids = {p.pid for p in procs}
    assert stream is None or stream.is_alive(), "the stream ended before the router was killed"
    router.proc.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    left = wait_gone(pids, timeout=BOUND)
    took = time.monotonic() - t0
    router.proc.wait(10)
    assert not left, f"alive {BOUND} s after the router's SIGKILL: " + ", ".join(
        f"{pid} {' '.join(psutil.Process(pid).cmdline())}" for pid in left)
    print(f"{len(pids)} children gone {took:.2f} s after the router's SIGKILL")


def loading(router: Router, models: list[str]) -> None:
    """Ask for ``models`` to load; return once the router says each is LOADING."""
    for m in models:
        assert router.client.post("/models/load", json={"model": m}).status_code == 200
    for m in models:
        router.events.wait_for(m, "loading", timeout=30)


@pytest.mark.parametrize("phase", ["loading", "streaming", "both"])
def test_real_children_die_with_the_router(start: Start, tiny_models: Any, phase: str) -> None:
    """Real children, loading (tiny-l, tiny-s), streaming (tiny-m), or one of each. A real load
    takes about a second, so a real child is killed early in its load (once the router said
    LOADING); the fakes below stay LOADING for a minute."""
    router = start(["--models-dir", str(tiny_models.root), "--models-max", "4"])
    stream = None
    if phase in ("streaming", "both"):
        assert router.tracked("tiny-m")[0] == 200
        stream = stream_started(router, "tiny-m", 400)
    if phase in ("loading", "both"):
        loading(router, ["tiny-l"] if phase == "both" else ["tiny-l", "tiny-s"])
    kill_router_and_wait(router, children(router, 1 if phase == "streaming" else 2), stream)


@pytest.mark.parametrize("phase", ["loading", "streaming", "both"])
def test_fake_children_that_ignore_eof_die_with_the_router(start: Start, tiny_models: Any,
                                                           tmp_path: Path, phase: str) -> None:
    """Fakes that ignore the exit command and stdin EOF (hang-on-exit), in a 60 s load or in a
    stream of 0.2 s chunks: nothing but the death signal ends them."""
    root = tmp_path / "models"
    root.mkdir()
    for name in (FAKE_LOADING, FAKE_STREAMING):
        (root / f"{name}.gguf").symlink_to(tiny_models["tiny-xs"].path)
    router = start(["--models-dir", str(root), "--models-max", "4"], child_cmd=FAKE)
    stream = None
    if phase in ("streaming", "both"):
        assert router.tracked(FAKE_STREAMING)[0] == 200
        stream = stream_started(router, FAKE_STREAMING, 300)
    if phase in ("loading", "both"):
        loading(router, [FAKE_LOADING])
        assert router.status(FAKE_LOADING) == "loading"
    kill_router_and_wait(router, children(router, 1 if phase != "both" else 2), stream)


def test_download_child_dies_with_the_router(start: Start, tmp_path: Path) -> None:
    """A download child mid-download (a throttled hub: about 18 s for the file)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    with LocalHub() as hub:
        hub.set_throttle(32 * 1024, repo=REPO_XS)
        (tmp_path / "none").mkdir()
        router = start(["--models-dir", str(tmp_path / "none"), "--models-max", "1"],
                       env={**hub.env(), "LLAMA_CACHE": str(cache)})
        r = router.client.post("/models", json={"model": MODEL_XS})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 60
        while not any(m.get("model") == MODEL_XS and m.get("event") == "download_progress"
                      for _, m in list(router.events.items)):
            assert time.monotonic() < deadline, f"no download progress\n{router.log()}"
            time.sleep(0.02)
        kill_router_and_wait(router, children(router, 1))
