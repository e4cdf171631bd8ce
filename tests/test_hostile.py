"""Hostile input over the router's HTTP API: each gets a clear 4xx, and the router keeps serving.

The sentence the fuzz test checks (h11 style): whatever a client sends, the router answers with a
status below 500, every 4xx the router writes itself is ``{"error": {"code", "message", "type"}}``,
and it goes on serving. A request the HTTP parser itself refuses (a method token it does not know,
a bare CR in a header) gets the same error shape from the protocol layer
(``refimpl/router/http.py``) and a closed connection, before the app sees it. A table of hand-picked cases comes
first, then a hypothesis test over methods, paths, queries and bodies.

Real children (``refimpl.child``): one model is loaded to show that serving goes on.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.routers import Router, Target
from refimpl.core.config import RouterConfig
from refimpl.core.router import RouterCore
from refimpl.router import app as router_app
from refimpl.router.driver import Driver
from refimpl.router.options import RouterOptions

pytestmark = pytest.mark.live

MODEL = "tiny-xs"
KNOWN = {"corrupt", "tiny-l", "tiny-m", "tiny-s", "tiny-sharded", "tiny-vision", "tiny-xs"}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def router(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    log = tmp_path_factory.mktemp("hostile-router") / "router.log"
    r = Router(Target(None, None), ["--models-dir", str(tiny_models.root), "--models-max", "2",
                                    "--offline"], log)
    try:
        assert r.tracked(MODEL)[0] == 200  # loaded once: later checks cost one small completion
        yield r
        assert r.proc.poll() is None, f"the router died:\n{r.log()}"
        assert r.tracked(MODEL)[0] == 200
        r.check(models_max=2)
    finally:
        leftovers = r.stop()
    assert not leftovers, f"children outlived the router: {leftovers}"


def openai_error(r: httpx.Response, statuses: tuple[int, ...]) -> dict[str, Any]:
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == r.status_code and isinstance(err["message"], str) and err["message"]
    assert err["type"] in ("invalid_request_error", "not_found_error"), err
    return err


def still_serving(router: Router) -> None:
    assert router.client.get("/health").status_code == 200
    status, text = router.tracked(MODEL)
    assert status == 200, (status, text)


def raw(router: Router, data: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes on a fresh connection: (status, the whole answer) or (0, b"") if the router
    closed the connection without an answer."""
    with socket.create_connection(("127.0.0.1", router.port), timeout=timeout) as s:
        s.sendall(data)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not _complete(answer):
                piece = s.recv(65536)
                if not piece:
                    break
                answer += piece
        except (socket.timeout, ConnectionResetError):
            pass
    if not answer.startswith(b"HTTP/1.1 "):
        return 0, answer
    return int(answer[9:12]), answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


CHAT = "/v1/chat/completions"

# (case, method, path, body): each must get an OpenAI-style 4xx from the router.
TABLE: list[tuple[str, str, str, bytes | None, tuple[int, ...]]] = [
    ("malformed JSON", "POST", CHAT, b'{"model": "tiny-xs",', (400,)),
    ("JSON but not an object", "POST", CHAT, b'["tiny-xs"]', (400,)),
    ("JSON nested 100000 deep", "POST", CHAT, b"[" * 100_000 + b"]" * 100_000, (400,)),
    ("model is a number", "POST", CHAT, b'{"model": 5}', (400,)),
    ("model is a list", "POST", CHAT, b'{"model": ["tiny-xs"]}', (400,)),
    ("model is an object (load)", "POST", "/models/load", b'{"model": {"id": "tiny-xs"}}',
     (400,)),
    ("missing model", "POST", CHAT, b'{"messages": []}', (400,)),
    ("null model", "POST", CHAT, b'{"model": null}', (400,)),
    ("empty model", "POST", CHAT, b'{"model": ""}', (400,)),
    ("empty body", "POST", CHAT, b"", (400,)),
    ("unknown model", "POST", CHAT, b'{"model": "no-such-model"}', (400, 404)),
    ("unknown model (load)", "POST", "/models/load", b'{"model": "no-such-model"}', (404,)),
    ("unknown model (unload)", "POST", "/models/unload", b'{"model": "no-such-model"}',
     (400, 404)),
    ("over-long model name", "POST", CHAT,
     json.dumps({"model": "m" * 100_000}).encode(), (400, 404)),
    ("../ in the name", "POST", CHAT, b'{"model": "../tiny-xs"}', (400, 404)),
    ("../ to a system file", "POST", CHAT, b'{"model": "../../../../etc/passwd"}', (400, 404)),
    ("path through the name", "POST", CHAT, b'{"model": "tiny-xs/../tiny-xs"}', (400, 404)),
    ("absolute path as name", "POST", "/models/load", b'{"model": "/etc/passwd"}', (404,)),
    ("NUL after a real name", "POST", CHAT, b'{"model": "tiny-xs\\u0000"}', (400, 404)),
    ("NUL in a GET name", "GET", "/props?model=tiny-xs%00", None, (400, 404)),
    ("../ in a GET name", "GET", "/props?model=..%2Ftiny-xs", None, (400, 404)),
    ("bad UTF-8 in the body", "POST", CHAT, b'{"model": "\xff\xfe tiny-xs"}', (400,)),
    ("bad UTF-8 in the query", "GET", "/props?model=%ff%fe", None, (400, 404)),
    ("CRLF in a JSON name", "POST", CHAT, b'{"model": "x\\r\\nX-Injected: 1"}', (400, 404)),
    ("CRLF in a GET name", "GET", "/props?model=x%0d%0aX-Injected:%201", None, (400, 404)),
    ("unrouted method TRACE", "TRACE", CHAT, None, (405,)),
    ("unrouted method OPTIONS", "OPTIONS", "/models", None, (405,)),
    ("unrouted method PROPFIND", "PROPFIND", "/props", None, (405,)),
    ("DELETE /models with ../", "DELETE", "/models?model=../../tiny-xs", None, (400, 404)),
]


@pytest.mark.parametrize("case,method,path,body,statuses", TABLE, ids=[t[0] for t in TABLE])
def test_hand_picked_hostile_request(router: Router, case: str, method: str, path: str,
                                     body: bytes | None, statuses: tuple[int, ...]) -> None:
    r = router.client.request(method, path, content=body,
                              headers={"Content-Type": "application/json"})
    err = openai_error(r, statuses)
    assert len(err["message"]) < 400, "error messages echo only so much of the input"
    assert "x-injected" not in r.headers
    if r.status_code == 405:
        assert "GET" in r.headers["allow"], r.headers
    assert router.client.get("/health").status_code == 200


def test_hostile_requests_leave_the_router_serving(router: Router) -> None:
    """After the table: the router is alive and still serves a model."""
    still_serving(router)


def test_body_over_the_limit_by_content_length_is_413(router: Router) -> None:
    """A declared body over the limit is refused before it is read."""
    code, answer = raw(router, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/json\r\n"
                       + f"Content-Length: {router_app.MAX_BODY + 1}\r\n\r\n".encode() + b"{")
    assert code == 413, answer[:300]
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == 413 and "limit" in body["error"]["message"], body
    still_serving(router)


def test_chunked_body_over_the_limit_is_413(router: Router) -> None:
    """A body with no length is counted as it comes, and refused at the limit."""
    piece = b"x" * MIB

    def chunks() -> Iterator[bytes]:
        for _ in range(router_app.MAX_BODY // MIB + 2):
            yield piece

    try:
        r = router.client.post(CHAT, content=chunks())
    except httpx.HTTPError:  # it may close the connection while we still write
        pytest.fail("the router closed the connection instead of answering 413")
    openai_error(r, (413,))
    still_serving(router)


def test_body_at_the_limit_is_read(router: Router) -> None:
    """A body just under the limit is read (and judged on its content)."""
    filler = b" " * (router_app.MAX_BODY - 64)
    r = router.client.post(CHAT, content=b'{"model": "no-such-model"}' + filler)
    openai_error(r, (400, 404))


@pytest.mark.parametrize("request_bytes", [
    b"BREW /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rX-Injected: 1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x00\x01\x02 garbage \xff\r\n\r\n",
], ids=["unknown method token", "bare CR in a header", "space in a header name",
        "unknown HTTP version", "binary garbage"])
def test_malformed_http_is_refused_by_the_parser(router: Router, request_bytes: bytes) -> None:
    """What the HTTP parser cannot read gets a 400 in the OpenAI error shape (written by
    refimpl/router/http.py: the app never sees it) or a closed connection; no header is
    injected."""
    code, answer = raw(router, request_bytes)
    assert code in (0, 400), answer[:300]
    if code == 400:  # in the router's error shape, though the app never saw the request
        error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == 400 and error["message"] and error["type"]
    assert b"x-injected" not in answer.lower().partition(b"\r\n\r\n")[0]
    still_serving(router)


def test_slow_client_does_not_block_others(router: Router) -> None:
    """A client that sends half its body and stops holds only its own connection: others are
    served meanwhile. (After BODY_IDLE_TIMEOUT it gets 408: test_stalled_body_gets_408.)"""
    slow = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    try:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     b'{"model": "tiny')
        t0 = time.monotonic()
        for _ in range(3):
            still_serving(router)
        assert time.monotonic() - t0 < 10
    finally:
        slow.close()
    still_serving(router)


# -- the same rules in process, where the body timeout can be made short ------------------------

def _app() -> router_app.RouterApp:
    driver = Driver(RouterCore(RouterConfig(models=())), spawner=None)  # type: ignore[arg-type]
    return router_app.RouterApp(driver, RouterOptions())


async def _call(app: Any, method: str, path: str, pieces: list[bytes], stall: bool,
                headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict[str, Any]]:
    """One ASGI request whose body comes in ``pieces`` and then, if ``stall``, never ends."""
    sent: list[dict[str, Any]] = []
    queue = list(pieces)

    async def receive() -> dict[str, Any]:
        if queue:
            return {"type": "http.request", "body": queue.pop(0), "more_body": True}
        if stall:
            await anyio.sleep_forever()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers or [],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    with anyio.fail_after(5):
        await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def test_stalled_body_gets_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that stops arriving is answered 408 after the idle timeout (60 s by default)."""
    monkeypatch.setattr(router_app, "BODY_IDLE_TIMEOUT", 0.2)
    app = _app().app
    for path in (CHAT, "/models/load"):
        t0 = time.monotonic()
        status, body = anyio.run(_call, app, "POST", path, [b'{"model": "tin'], True)
        assert status == 408 and body["error"]["code"] == 408, body
        assert 0.15 < time.monotonic() - t0 < 2


def test_counted_body_over_the_limit_gets_413(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit holds for a body with no Content-Length, on every endpoint that reads one."""
    monkeypatch.setattr(router_app, "MAX_BODY", 1000)
    app = _app().app
    for path in (CHAT, "/models/load", "/models/unload"):
        status, body = anyio.run(_call, app, "POST", path, [b"x" * 600, b"x" * 600], False)
        assert status == 413 and body["error"]["type"] == "invalid_request_error", body


# -- hypothesis: anything goes, the sentence holds ------------------------------------------------

names = st.one_of(
    st.text(max_size=40), st.sampled_from(["../tiny-xs", "tiny-xs\x00", "TINY-XS", " tiny-xs",
                                           "tiny-xs ", "*", "%2e%2e/x", "\u202etiny-xs"]),
    st.text(alphabet="./\\\x00\r\n:%", max_size=10)).filter(lambda n: n not in KNOWN)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4), max_leaves=12)
bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda n, extra: json.dumps({"model": n, **extra}).encode(), names,
              st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
    st.builds(lambda v: json.dumps({"model": v}).encode(), json_values),
    json_values.map(lambda v: json.dumps(v).encode()),
)
paths = st.sampled_from([CHAT, "/v1/completions", "/completion", "/tokenize", "/models/load",
                         "/models/unload", "/props", "/v1/models", "/models", "/infill",
                         "/x/../models/load", "/%2e%2e/etc/passwd"])
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          deadline=None)
@given(method=methods, path=paths, name=names, body=bodies,
       autoload=st.sampled_from([None, "0", "1", "maybe", "\x00"]))
def test_any_request_gets_an_answer_below_500(router: Router, method: str, path: str,
                                             name: str, body: bytes,
                                             autoload: str | None) -> None:
    if method == "POST" and path == "/models":
        method = "PUT"  # POST /models starts a download; this router is --offline anyway
    params = {"model": name} if method in ("GET", "DELETE") else {}
    if autoload is not None:
        params["autoload"] = autoload
    r = router.client.request(method, path, params=params, content=body)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["code"] == r.status_code and err["message"] and err["type"], r.text[:300]


def test_router_still_serves_after_the_fuzzing(router: Router) -> None:
    still_serving(router)
    # a concurrent burst of hostile requests does not stop it either
    errors: list[int] = []

    def burst() -> None:
        with httpx.Client(base_url=router.url, timeout=30) as c:
            for i in range(20):
                errors.append(c.post(CHAT, content=b"{" * (i + 1)).status_code)

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors and set(errors) == {400}, set(errors)
    still_serving(router)


def test_log_has_no_traceback(router: Router) -> None:
    log = Path(router.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
