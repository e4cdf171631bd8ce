"""HTTP limits of the live router (issue 12, "HTTP"): what a client can make it hold.

- A head (request line and headers) past ``--max-header-size`` gets 431 as soon as the limit is
  passed: eight unfinished 16 MiB headers cost the router almost nothing.
- A head must arrive within ``--timeout-header``: a connection that sends nothing is closed, one
  that trickles its head gets 408; an idle kept-alive connection is closed after
  ``--timeout-keep-alive``.
- Past ``--limit-concurrency`` connections a request gets 503 at once (not a hang), and is
  served again once connections close.
- A body's "model" is found without building the document: a 30 MB body of ``{},{},...`` costs
  about its own size; bodies held at once are capped (``app.BODY_BUDGET``), past it 503.

Each test waits for the router's answer or close on its socket (bounded), never for time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from conformance.routers import Router, Target
from refimpl.router import app as router_app

pytestmark = pytest.mark.live

FAKE = "{python} -m fixtures.fake_child"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def router(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    log = tmp_path_factory.mktemp("limits") / "router.log"
    r = Router(Target(None, FAKE), ["--models-dir", str(tiny_models.root), "--offline",
                                    "--timeout-header", "1", "--timeout-keep-alive", "1",
                                    "--limit-concurrency", "6"], log)
    try:
        yield r
        assert r.proc.poll() is None, f"the router died:\n{r.log()}"
        assert "Traceback" not in r.log(), r.log()
    finally:
        leftovers = r.stop()
    assert not leftovers, f"children outlived the router: {leftovers}"


def connect(router: Router, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", router.port), timeout=timeout)


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the router sends until it closes the connection (a reset ends it too);
    socket.timeout if it does neither within the socket's timeout."""
    data = b""
    try:
        while piece := s.recv(65536):
            data += piece
    except ConnectionResetError:
        pass
    return data


def status_of(answer: bytes) -> int:
    return int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0


def error_of(answer: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == status_of(answer) and error["message"] and error["type"], error
    return error


def rss(router: Router) -> int:
    rss_bytes: int = psutil.Process(router.proc.pid).memory_info().rss
    return rss_bytes


def healthy(router: Router) -> None:
    """/health answers 200 again within 10 s (connections the test closed are let go)."""
    deadline = time.monotonic() + 10
    while True:
        with connect(router) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = read_until_closed(s)
        if status_of(answer) == 200 or time.monotonic() > deadline:
            assert status_of(answer) == 200, answer[:300]
            return


# -- head size ----------------------------------------------------------------------------------

def test_a_head_just_over_the_limit_gets_431(router: Router) -> None:
    with connect(router) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 * 1024))
        answer = read_until_closed(s)
    assert status_of(answer) == 431, answer[:300]
    assert "64" in error_of(answer)["message"] or "65536" in error_of(answer)["message"]
    healthy(router)


def test_unfinished_huge_headers_do_not_grow_memory(router: Router) -> None:
    """8 connections each try to send a 16 MiB header that never ends: each is cut off (431 or
    a reset) within the first few MiB, and the router's memory stays where it was."""
    before = rss(router)
    sent: list[int] = []
    answers: list[int] = []

    def attack() -> None:
        total = 0
        with connect(router) as s:
            try:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
                while total < 16 * MIB:
                    s.sendall(b"a" * MIB)
                    total += MIB
                answers.append(status_of(read_until_closed(s)))
            except (BrokenPipeError, ConnectionResetError):
                answers.append(-1)  # cut off while sending: the router closed the connection
            except socket.timeout:
                answers.append(0)  # neither answered nor closed
        sent.append(total)

    threads = [threading.Thread(target=attack) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 8 and set(answers) <= {431, -1}, answers
    assert max(sent) <= 8 * MIB, sent  # the socket buffers hold a few MiB; not 16
    grown = rss(router) - before
    assert grown < 32 * MIB, f"the router grew {grown / MIB:.0f} MiB"
    healthy(router)


# -- head and keep-alive timeouts ---------------------------------------------------------------

def test_a_connection_that_sends_nothing_is_closed(router: Router) -> None:
    with connect(router) as s:
        t0 = time.monotonic()
        assert read_until_closed(s) == b""
        assert time.monotonic() - t0 >= 0.5  # --timeout-header 1, not at once


def test_a_trickled_head_gets_408(router: Router) -> None:
    """One byte every 0.1 s keeps the connection busy but never finishes the head: the head
    timeout counts from the connection, not from the last byte."""
    with connect(router) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        s.settimeout(0.1)
        answer = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                s.sendall(b"a")
                piece = s.recv(65536)
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not piece:
                break
            answer += piece
    assert status_of(answer) == 408, answer[:300]
    assert error_of(answer)["type"] == "invalid_request_error"


def test_an_idle_kept_alive_connection_is_closed(router: Router) -> None:
    with connect(router) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(s)  # the answer, then the close after --timeout-keep-alive
    assert status_of(answer) == 200 and answer.endswith(b'{"status":"ok"}'), answer[:300]


# -- concurrency --------------------------------------------------------------------------------

def test_past_the_concurrency_limit_a_request_gets_503_not_a_hang(router: Router) -> None:
    """With --limit-concurrency 6, a request on a connection past the sixth (the test's own SSE
    subscription holds one) is answered 503 at once; served again once the others close."""
    idle = [connect(router) for _ in range(8)]
    try:
        with connect(router, timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_until_closed(s)
        assert status_of(answer) == 503, answer[:300]
        assert error_of(answer)["type"] == "unavailable_error"
        assert b"retry-after: 1" in answer.lower()
    finally:
        for s in idle:
            s.close()
    healthy(router)


# -- bodies -------------------------------------------------------------------------------------

def hwm(router: Router) -> int:
    """The router's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{router.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_body_of_many_small_values_costs_about_its_size(router: Router) -> None:
    """30 MB of ``{},{},...`` used to take the router to about 900 MB just to read "model"
    (json.loads builds every dict); now its peak grows by about the body's size."""
    body = b'{"a": [' + b"{}," * (10 * 1000 * 1000) + b'{}], "model": "no-such-model"}'
    base = rss(router)
    r = router.client.post("/v1/chat/completions", content=body,
                           headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 404), r.text[:300]
    assert "no-such-model" in r.json()["error"]["message"]
    grown = hwm(router) - base
    assert grown < 3 * len(body), f"peak grew {grown / MIB:.0f} MiB for a {len(body) / MIB:.0f}" \
                                  " MiB body"


@pytest.mark.parametrize("body, status", [
    (b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b', "model": "x"}', 400),
    (b'{"model": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400),
    (b'{"model": "no-such-model", "model": 1}', 400),
    (b'{"model": NaN}', 400),
])
def test_nested_and_repeated_values_are_judged_without_building(router: Router, body: bytes,
                                                                  status: int) -> None:
    r = router.client.post("/v1/chat/completions", content=body)
    assert r.status_code == status, r.text[:300]


def test_bodies_held_at_once_are_capped(router: Router) -> None:
    """Bodies declared at once past BODY_BUDGET get 503 at once, before they are read."""
    size = router_app.MAX_BODY - 1024
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(size).encode() + b"\r\n\r\n{")
    held = []
    try:
        answer = b""
        for _ in range(router_app.BODY_BUDGET // size + 1):
            s = connect(router)
            held.append(s)
            s.sendall(head)
        s.settimeout(10)
        answer = read_until_closed(s)  # the last one: over the budget
        assert status_of(answer) == 503, answer[:300]
        assert "retry" in error_of(answer)["message"]
    finally:
        for s in held:
            s.close()
    healthy(router)
