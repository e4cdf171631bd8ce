"""Live scenarios with real requests: thrash, busy models, coalescing, FIFO, disconnects, crashes.

What the client saw (its requests and ``/models/sse``) is checked with the same invariant functions
as the simulator (``properties/observed.py``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from fixtures.procs import children_of

from .conftest import Router

pytestmark = [pytest.mark.live]
A, B, C = "tiny-xs", "tiny-s", "tiny-vision"
BUSY = "tiny-l"  # the biggest tiny model: 250 streamed tokens keep it busy for a few seconds


def busy(router: Router, result: list[Any] | None = None) -> threading.Thread:
    """Start a long stream on BUSY and return once its first chunk arrived (it is in flight)."""
    started = threading.Event()
    thread = in_thread(slow_stream, router, BUSY, 1000, result=result, started=started)
    assert started.wait(60), "the busy stream never started"
    return thread
NO_STOP = {"2": -100, "260": -100}  # no </s>, no <|im_end|>: talk until max_tokens


def slow_stream(router: Router, model: str, req: int, chunks: int = 250, pause: float = 0.0,
                result: list[Any] | None = None, started: threading.Event | None = None) -> None:
    """A long streamed completion, so the model stays busy; recorded in the trace. The client
    reads as the chunks come: the router's view of the end and the client's must agree."""
    router.note("send", req=req, model=model)
    body = {"model": model, "stream": True, "max_tokens": chunks, "logit_bias": NO_STOP,
            "messages": [{"role": "user", "content": "count"}]}
    seen = 0
    ok = False
    try:
        with httpx.Client(base_url=router.url, timeout=httpx.Timeout(120, connect=5)) as c, \
                c.stream("POST", "/v1/chat/completions", json=body) as r:
            router.note("answer", req=req, model=model, status=r.status_code)
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen += 1
                    ok = line == "data: [DONE]"
                    if started is not None:
                        started.set()
                    time.sleep(pause)
    except httpx.HTTPError:
        ok = False
    router.note("end", req=req, ok=ok)
    if result is not None:
        result.append((ok, seen))


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def loads(router: Router, model: str) -> int:
    return router.events.statuses(model).count("loading") - sum(
        1 for _, m in router.events.items if m.get("model") == model
        and m["data"].get("status") == "loading" and "progress" in m["data"])


@pytest.mark.thrash
def test_ab_alternation_with_one_slot_does_not_thrash(start_router: Callable[..., Router]) -> None:
    router = start_router("--models-max", "1")
    results: list[tuple[int, str]] = []
    threads = []
    for i in range(6):
        threads.append(in_thread(lambda m: results.append(router.tracked(m)), A if i % 2 else B))
        time.sleep(0.05)
    for t in threads:
        t.join(120)
    assert [s for s, _ in results] == [200] * 6, results
    # the queue holds one entry per model: at most one load per model per wave
    assert loads(router, A) + loads(router, B) <= 4, router.events.items
    router.check(models_max=1)


@pytest.mark.thrash
def test_busy_model_is_kept_while_a_queued_request_waits(
        start_router: Callable[..., Router]) -> None:
    router = start_router("--models-max", "1")
    assert router.tracked(BUSY)[0] == 200
    result: list[Any] = []
    streaming = busy(router, result)
    started = time.monotonic()
    status, _ = router.tracked(B)
    waited = time.monotonic() - started
    streaming.join(60)
    assert status == 200 and result and result[0][0], (status, result)
    assert result[0][1] > 200, result  # the whole stream came through
    assert waited > 0.5, f"B was served after {waited:.2f} s: was the busy model evicted?"
    router.check(models_max=1)


def test_requests_for_one_model_share_one_load(start_router: Callable[..., Router]) -> None:
    router = start_router()
    results: list[tuple[int, str]] = []
    threads = [in_thread(lambda: results.append(router.tracked(A))) for _ in range(5)]
    for t in threads:
        t.join(60)
    assert [s for s, _ in results] == [200] * 5
    assert loads(router, A) == 1, router.events.statuses(A)
    router.check(models_max=4)


@pytest.mark.thrash
def test_arrival_order_is_kept_between_models(start_router: Callable[..., Router]) -> None:
    router = start_router("--models-max", "1")
    assert router.tracked(BUSY)[0] == 200
    streaming = busy(router)
    waiting = [in_thread(router.tracked, B)]
    time.sleep(0.3)
    waiting.append(in_thread(router.tracked, C))
    for t in [streaming, *waiting]:
        t.join(120)
    order = [m["model"] for _, m in router.events.items
             if m["data"].get("status") == "loading" and "progress" not in m["data"]
             and m["model"] in (B, C)]
    assert order[:2] == [B, C], order
    router.check(models_max=1)


@pytest.mark.thrash
def test_client_gone_while_queued_leaves_the_queue(start_router: Callable[..., Router]) -> None:
    router = start_router("--models-max", "1")
    assert router.tracked(BUSY)[0] == 200
    streaming = busy(router)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(router.url + "/v1/chat/completions", timeout=0.5, json={
            "model": B, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    streaming.join(60)
    time.sleep(1.5)
    assert "loading" not in router.events.statuses(B), "B was loaded for a client that left"
    assert router.tracked(C)[0] == 200  # and the router still serves
    router.check(models_max=1)


def child_pid(router: Router, model_file: str) -> int:
    for pid in children_of(router.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if model_file.encode() in cmdline:
            return pid
    raise AssertionError(f"no child process for {model_file}")


def test_child_killed_mid_request(start_router: Callable[..., Router], tiny_models: Any) -> None:
    router = start_router()
    assert router.tracked(BUSY)[0] == 200
    result: list[Any] = []
    streaming = busy(router, result)
    router.note("crash", model=BUSY)
    os.kill(child_pid(router, str(tiny_models[BUSY].path)), signal.SIGKILL)
    streaming.join(60)
    assert result and not result[0][0], "the stream of a killed child cannot complete"
    router.events.wait_for(BUSY, "unloaded", timeout=10)
    status = router.models()[BUSY]["status"]
    assert status.get("failed") is True and status.get("exit_code") not in (None, 0), status
    assert router.tracked(BUSY)[0] == 200  # it loads again on the next request
    router.check(models_max=4)


def test_corrupt_model_fails_with_its_exit_code(start_router: Callable[..., Router]) -> None:
    router = start_router()
    status, text = router.tracked("corrupt")
    assert status >= 500, (status, text)
    router.events.wait_for("corrupt", "unloaded", timeout=30)
    info = router.models()["corrupt"]["status"]
    assert info["value"] == "unloaded" and info.get("failed") is True, info
    assert info.get("exit_code") not in (None, 0), info
    assert router.tracked(A)[0] == 200  # the router still serves the others
    router.check(models_max=4)


def test_hanging_child_is_force_killed_after_the_stop_timeout(
        start_router: Callable[..., Router], target: Any) -> None:
    if target.binary:
        pytest.skip("needs the reference router's --child-cmd to run a child that hangs")
    router = start_router("--stop-timeout", "1", "--child-cmd",
                          f"{sys.executable} -m fixtures.fake_child --fault hang-on-exit")
    assert router.tracked(A)[0] == 200
    pid = child_pid(router, A)
    asked = time.monotonic()
    router.note("unload", model=A)
    assert router.client.post("/models/unload", json={"model": A}).status_code == 200
    router.events.wait_for(A, "unloaded", timeout=15)
    took = time.monotonic() - asked
    assert 0.9 <= took < 5, f"unloaded after {took:.2f} s with a 1 s stop timeout"
    info = router.models()[A]["status"]
    assert not info.get("failed"), info  # Z18: an unload the router asked for is not a failure
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    router.check(models_max=4)


@pytest.mark.thrash
def test_request_for_a_model_being_evicted_waits_for_the_next_child(
        start_router: Callable[..., Router]) -> None:
    """Z9: A idle; request B; request A 50 ms later must not go to A's dying child."""
    router = start_router("--models-max", "1")
    assert router.tracked(A)[0] == 200
    b = in_thread(router.tracked, B)
    time.sleep(0.05)
    status, text = router.tracked(A)
    b.join(60)
    assert status == 200, (status, text)
    router.check(models_max=1)


@pytest.mark.thrash
def test_cold_requests_beyond_the_limit_queue_instead_of_failing(
        start_router: Callable[..., Router]) -> None:
    """Z8 and Z10: cold router, requests for three models 100 ms apart, models_max 1: each is
    served by a child loaded for it; none gets 'model limit reached'."""
    router = start_router("--models-max", "1")
    results: list[tuple[int, str]] = []
    threads = []
    for model in (A, B, C):
        threads.append(in_thread(lambda m: results.append(router.tracked(m)), model))
        time.sleep(0.1)
    for t in threads:
        t.join(120)
    assert sorted(s for s, _ in results) == [200, 200, 200], results
    router.check(models_max=1)
