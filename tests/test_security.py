"""Security of the router: the API key, what children are given, and no child left behind.

- With ``--api-key`` every endpoint but ``/health`` asks for the key (the router's own endpoints,
  ``/models/sse``, ``/models/load``, downloads, ``DELETE /models``, proxied GETs and POSTs, methods
  no route takes), and the key is compared with ``hmac.compare_digest`` (constant time).
- Children listen on 127.0.0.1 only, never receive the key (argument, environment or header), and
  hold no copy of the router's descriptors.
- SIGTERM or SIGKILL of the router leaves no child behind, within a bound.

The key tests use FAKE children (``fixtures/fake_child.py``) because the fake echoes the headers
that reach it; the signal tests use real children (``refimpl.child``), whose exit on stdin EOF is
what is being checked, and a fake that ignores its exit command for the SIGTERM bound.
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import anyio
import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs without types-psutil
import pytest

from conformance.routers import Router, Target
from fixtures.procs import alive, children_of, wait_gone
from refimpl.router import app as router_app

pytestmark = pytest.mark.live

KEY = "s3cret-key-for-tests"
MODEL = "tiny-xs"
FAKE = "{python} -m fixtures.fake_child"


@pytest.fixture(scope="module")
def keyed(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """A router with --api-key (also in its environment as LLAMA_API_KEY) and fake children."""
    log = tmp_path_factory.mktemp("keyed-router") / "router.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMA_API_KEY", KEY)  # the router's environment: children must not get it
        r = Router(Target(None, FAKE), ["--models-dir", str(tiny_models.root), "--offline",
                                        "--api-key", KEY], log,
                   headers={"Authorization": f"Bearer {KEY}"})
    try:
        yield r
    finally:
        leftovers = r.stop()
    assert not leftovers, f"children outlived the router: {leftovers}"


# Every endpoint but /health, and what each does with the right key (anything but 401).
GUARDED = [
    ("GET", "/models", None), ("GET", "/v1/models", None), ("GET", "/models?reload=1", None),
    ("GET", "/models/sse", None), ("POST", "/models/load", {"model": MODEL}),
    ("POST", "/models/unload", {"model": "tiny-s"}), ("GET", "/props", None),
    ("GET", f"/props?model={MODEL}", None), ("GET", f"/slots?model={MODEL}", None),
    ("GET", f"/metrics?model={MODEL}", None),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": []}),
    ("POST", "/completion", {"model": MODEL, "prompt": "x"}),
    ("POST", "/tokenize", {"model": MODEL, "content": "x"}),
    ("POST", "/models", {"model": "user/repo:Q4_0"}), ("DELETE", "/models?model=user/repo", None),
    ("PUT", "/v1/chat/completions", {"model": MODEL}), ("OPTIONS", "/models", None),
    ("GET", "/health/", None), ("GET", "/health/../models", None), ("GET", "/", None),
    ("GET", "/nonexistent", None),
]
BAD_CREDENTIALS = [
    {}, {"Authorization": ""}, {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY[:-1]}"},
    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"bearer{KEY}"},
    {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}, {"X-Api-Key": KEY},
    {"Authorization": f"Bearer  {KEY}"},
]


def _request(router: Router, method: str, path: str, body: Any, headers: dict[str, str]
             ) -> tuple[int, str]:
    """(status, body); the body of a 200 from /models/sse is not waited for (it never ends)."""
    c = router.client  # no credentials of its own: each request brings its headers
    if path == "/models/sse":
        with c.stream(method, path, headers=headers) as r:
            return r.status_code, "" if r.status_code == 200 else r.read().decode()
    r = c.request(method, path, json=body, headers=headers)
    return r.status_code, r.text


@pytest.mark.parametrize("method,path,body", GUARDED, ids=[f"{m} {p}" for m, p, _ in GUARDED])
def test_every_endpoint_but_health_asks_for_the_key(keyed: Router, method: str, path: str,
                                                    body: Any) -> None:
    for headers in BAD_CREDENTIALS:
        status, text = _request(keyed, method, path, body, headers)
        assert status == 401, (headers, status, text[:200])
        err = json.loads(text)["error"]
        assert err == {"code": 401, "message": "Invalid API Key",
                       "type": "authentication_error"}, err
    status, text = _request(keyed, method, path, body, {"Authorization": f"Bearer {KEY}"})
    assert status != 401, (status, text[:200])


def test_health_needs_no_key(keyed: Router) -> None:
    assert httpx.get(keyed.url + "/health", timeout=5).status_code == 200


def test_the_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every guarded request goes through hmac.compare_digest, whatever the given key's length
    or prefix: no early ``==`` or length check that would leak how much of a guess is right."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the router's module calls hmac.<name>

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await router_app.error(200, "through")(scope, receive, send)

    guard = router_app._ApiKey(app, (KEY,))
    guesses = [b"", b"s", KEY[:-1].encode(), KEY.encode() + b"x", b"x" * 1000, KEY.encode()]
    statuses = []
    for guess in guesses:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/models", "method": "GET",
                 "headers": [(b"authorization", b"Bearer " + guess)]}
        anyio.run(guard, scope, None, send)
        statuses.append(sent[0]["status"])
    assert statuses == [401] * 5 + [200], statuses
    assert calls == [(g, KEY.encode()) for g in guesses], calls


def _child_pids(router: Router, want: int, timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = {p for p in children_of(router.proc.pid) if alive(p)}
        if len(pids) >= want or time.monotonic() > deadline:
            assert len(pids) >= want, f"{len(pids)} children, wanted {want}"
            return pids
        time.sleep(0.05)


def test_children_never_receive_the_key(keyed: Router) -> None:
    """Not as an argument, not in the environment, not in a proxied request's headers."""
    r = keyed.client.get(f"/props?model={MODEL}", headers={
        "Authorization": f"Bearer {KEY}", "X-Other": "kept"})
    assert r.status_code == 200, r.text
    reached = r.json()["headers"]
    assert KEY not in reached.get("authorization", "") and reached.get("x-other") == "kept", \
        reached
    r = keyed.client.post("/v1/chat/completions", headers=keyed.headers,
                          json={"model": MODEL, "messages": []})
    assert r.status_code == 200 and KEY not in r.json()["headers"].get("authorization", ""), \
        r.text
    for pid in _child_pids(keyed, 1):
        child = psutil.Process(pid)
        assert not any(KEY in arg for arg in child.cmdline())
        environ = child.environ()
        assert not any(KEY in f"{k}={v}" for k, v in environ.items())
        assert "LLAMA_SERVER_ROUTER_PORT" in environ
        # the child's own key instead (test_hardening.py: a child answers only with it)
        assert reached["authorization"] == f"Bearer {environ['LLAMA_API_KEY']}"


def listening(pid: int) -> list[str]:
    """The TCP addresses ``pid`` listens on (IPv4 as a.b.c.d:port, IPv6 as [addr]:port)."""
    return [f"[{c.laddr.ip}]:{c.laddr.port}" if ":" in c.laddr.ip else
            f"{c.laddr.ip}:{c.laddr.port}"
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN]


def test_the_listening_check_sees_a_wildcard_bind() -> None:
    """The check below can fail: a socket bound to every interface shows as 0.0.0.0."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        assert f"0.0.0.0:{s.getsockname()[1]}" in listening(os.getpid())


def test_children_listen_on_loopback_only_and_hold_no_router_descriptor(keyed: Router) -> None:
    assert keyed.client.post("/models/load", headers=keyed.headers,
                             json={"model": "tiny-s"}).status_code in (200, 400)
    keyed.events.wait_for("tiny-s", "loaded", timeout=30)
    # Descriptor targets from /proc: psutil shows no pipe's identity, nor a socket's inode.
    router_sockets = {os.readlink(fd) for fd in Path(f"/proc/{keyed.proc.pid}/fd").iterdir()
                      if os.readlink(fd).startswith("socket:")}
    for pid in _child_pids(keyed, 2):
        addresses = listening(pid)
        assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), addresses
        fds = {int(fd.name): os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        stdio = {fds.get(0), fds.get(1)}
        extra = {n: t for n, t in fds.items() if n > 2 and (t in stdio or t in router_sockets)}
        assert not extra, f"child {pid} holds copies of its pipes or the router's sockets: {extra}"


# -- no child left behind -------------------------------------------------------------------------

def _start(tmp_path: Path, tiny_models: Any, *extra: str, child_cmd: str | None = None
           ) -> Router:
    return Router(Target(None, child_cmd), ["--models-dir", str(tiny_models.root), "--offline",
                                            *extra], tmp_path / "router.log")


def _gone_within(pids: set[int], bound: float) -> float:
    t0 = time.monotonic()
    left = wait_gone(pids, bound)
    assert not left, f"children still alive after {bound} s: {left}"
    return time.monotonic() - t0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_router_killed_leaves_no_child(tmp_path: Path, tiny_models: Any,
                                       sig: signal.Signals) -> None:
    """Real children, one loaded and one still loading: SIGKILL closes their stdin (they exit on
    EOF), SIGTERM asks them to exit; either way none is left after 5 s."""
    router = _start(tmp_path, tiny_models)
    try:
        assert router.tracked(MODEL)[0] == 200
        router.client.post("/models/load", json={"model": "tiny-l"})
        pids = _child_pids(router, 2)
        router.proc.send_signal(sig)
        took = _gone_within(pids, 5.0)
        router.proc.wait(10)
    finally:
        leftovers = router.stop()
    assert not leftovers, leftovers
    print(f"{sig.name}: children gone {took:.2f} s after the signal")


def test_sigterm_kills_a_child_that_ignores_its_exit_command(tmp_path: Path,
                                                            tiny_models: Any) -> None:
    """A child that ignores the exit command and EOF is killed stop-timeout seconds after
    SIGTERM. (After SIGKILL of the router the death signal ends it: tests/test_no_orphans.py.)"""
    router = _start(tmp_path, tiny_models, "--stop-timeout", "1",
                    child_cmd=f"{FAKE} --fault hang-on-exit")
    try:
        assert router.tracked(MODEL)[0] == 200
        pids = _child_pids(router, 1)
        router.proc.send_signal(signal.SIGTERM)
        took = _gone_within(pids, 1 + 5.0)
        assert took >= 0.9, f"killed after {took:.2f} s, before its stop timeout"
        assert router.proc.wait(10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    finally:
        leftovers = router.stop()
    assert not leftovers, leftovers
