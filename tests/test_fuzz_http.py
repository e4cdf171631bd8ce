"""Hypothesis over the router's HTTP surface, as raw bytes on a socket (issue 12).

The sentence checked, h11 style: **whatever bytes a client sends, the router answers with a
status below 500 or closes the connection, within its timeouts; it keeps serving, and its memory
does not grow.** Methods (known, unknown, garbage), paths with any bytes, headers (any names and
values, repeated, over-long), bodies (JSON or not, naming a real model or not) and framing
(Content-Length right, short, long, negative, repeated; chunked, with bad chunks) are drawn; the
router runs with ``--timeout-header 1`` so an unfinished head costs a second, and every request
ends with ``Connection: close`` (or our end's EOF, for framing that leaves the body unfinished),
so each case ends with the router closing the connection: a case that neither answers nor
closes within 10 s is a hang.

One router (fake children) serves the whole module. Case counts: 5 x the profile's examples
(``ci``: 500; ``dev``: 300; ``nightly``: 10000).
"""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path
from typing import Any, Iterator

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conformance.routers import Router, Target

pytestmark = pytest.mark.live

FAKE = "{python} -m fixtures.fake_child"
MODEL = "tiny-xs"
CASES = 5 * settings().max_examples  # the profile in force
SEEN: dict[str, int] = {}  # status (or "closed") -> cases, printed at the end


@pytest.fixture(scope="module")
def router(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    folder = tmp_path_factory.mktemp("fuzz-http")
    (folder / "models").mkdir()
    (folder / "models" / f"{MODEL}.gguf").symlink_to(tiny_models[MODEL].path)
    r = Router(Target(None, FAKE), ["--models-dir", str(folder / "models"), "--offline",
                                    "--timeout-header", "1"], folder / "router.log")
    try:
        assert r.chat(MODEL).status_code == 200
        r.rss0 = psutil.Process(r.proc.pid).memory_info().rss  # type: ignore[attr-defined]
        yield r
        assert r.proc.poll() is None, f"the router died:\n{r.log()}"
        assert "Traceback" not in Path(r.log_path).read_text(errors="replace")
        assert r.chat(MODEL).status_code == 200
    finally:
        leftovers = r.stop()
    assert not leftovers, f"children outlived the router: {leftovers}"


def exchange(router: Router, data: bytes, half_close: bool) -> bytes:
    """Send ``data``; everything the router sends until it closes (our EOF first if
    ``half_close``). socket.timeout (a hang) if it neither answers nor closes in 10 s."""
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError as exc:  # it closed first (a refused head, or an answer sent whole and
            # the connection dropped before our half-close: ENOTCONN): what it said is still
            # to be read
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
        answer = b""
        try:
            while piece := s.recv(65536):
                answer += piece
                head = answer.partition(b"\r\n\r\n")[0].lower()
                if b"\r\n\r\n" in answer and b"content-type: text/event-stream" in head:
                    break  # /models/sse: a stream that ends only when the router stops
        except OSError as exc:  # dropped after what it said: that is the answer
            if exc.errno not in (errno.ECONNRESET, errno.ENOTCONN):
                raise
    return answer


# -- what a client may send ---------------------------------------------------------------------

TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP",
                min_size=1, max_size=12)
KNOWN_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS",
                                 b"HEAD", b"TRACE", b"CONNECT", b"PRI"])


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any],
           percent: int = 80) -> st.SearchStrategy[Any]:
    """``usual`` about ``percent`` % of the time: mostly requests the parser takes, so that the
    app is fuzzed too, not only the parser (shrinks towards ``usual``)."""
    return st.integers(0, 99).flatmap(lambda i: usual if i < percent else odd)


methods = mostly(st.sampled_from([b"GET", b"POST"]),
                 st.one_of(KNOWN_METHODS, TOKEN.map(str.encode),
                           st.binary(min_size=1, max_size=8)))
ROUTES = ["/health", "/models", "/v1/models", "/models/load", "/models/unload", "/models/sse",
          "/props", "/v1/chat/completions", "/completion", "/tokenize", "/slots", "/metrics",
          "/", "*", "/models?reload=1", "/props?model=tiny-xs", "/v1/models?autoload=0"]
paths = mostly(st.one_of(
    st.sampled_from(ROUTES).map(str.encode),
    st.builds(lambda route, tail: route.encode() + tail, st.sampled_from(ROUTES),
              st.text(alphabet="%/?&=.:@!$'()*+,;~-_abcXYZ019", max_size=30).map(str.encode))),
               st.one_of(st.builds(lambda route, tail: route.encode() + tail, st.sampled_from(ROUTES),
                            st.binary(max_size=30)),
                  st.binary(max_size=60),
                  st.text(max_size=40).map(lambda t: "/" + t).map(
                      lambda t: t.encode("utf-8", "surrogatepass"))))
versions = mostly(st.just(b"HTTP/1.1"),
                  st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"http/1.1", b""]))
header_names = mostly(st.one_of(st.sampled_from([b"Host", b"Content-Type", b"Authorization",
                                                b"Accept", b"Expect", b"Upgrade", b"Connection",
                                                b"Transfer-Encoding", b"Content-Length",
                                                b"X-Forwarded-For"]), TOKEN.map(str.encode)),
                      st.binary(max_size=12), 90)
header_values = mostly(st.one_of(st.sampled_from([b"application/json", b"100-continue",
                                                 b"websocket", b"keep-alive", b"chunked",
                                                 b"gzip, chunked", b"-1", b"0", b"Bearer x",
                                                 b"text/event-stream"]),
                                st.binary(max_size=40).map(  # any byte a value may hold
                                    lambda b: bytes(c for c in b if c not in b"\r\n\0"))),
                       st.one_of(st.binary(max_size=40),
                                 st.integers(0, 200_000).map(lambda n: b"v" * n)),  # > 64 KiB
                       90)
headers = st.lists(st.tuples(header_names, header_values), max_size=4)
names = st.one_of(st.just(MODEL), st.text(max_size=20), st.sampled_from(
    ["../tiny-xs", "tiny-xs\x00", "*", "TINY-XS", "tiny-xs\r\nX: 1"]))
bodies = mostly(st.builds(
    lambda n, rest: json.dumps({"model": n, "messages": [], **rest}).encode(),
    names, st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6), max_size=3)),
                st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=8).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 20_000).map(lambda n: b'{"model": "x", "a": [' + b"[]," * n + b"[]]}"),
    st.integers(1, 5_000).map(lambda n: b"[" * n + b"]" * n),
), 60)
FRAMINGS = ["length", "length", "length", "chunked", "chunked", "none", "short-length",
            "long-length", "negative-length", "two-lengths", "bad-chunks", "length-and-chunked"]


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(the bytes, whether the body is left unfinished: then our end half-closes)."""
    method, path, version = draw(methods), draw(paths), draw(versions)
    body = draw(bodies)
    framing = draw(st.sampled_from(FRAMINGS))
    lines = [method + b" " + path + (b" " + version if version else b"")]
    lines += [name + b": " + value for name, value in draw(headers)]
    unfinished = False
    if framing == "length":
        lines.append(b"Content-Length: " + str(len(body)).encode())
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n"
                        for p in (body[:7], body[7:]) if p) + b"0\r\n\r\n"
    elif framing == "none":
        body = b""
    elif framing == "short-length":  # the rest reads as a next request
        lines.append(b"Content-Length: " + str(len(body) // 2).encode())
    elif framing == "long-length":
        lines.append(b"Content-Length: " + str(len(body) + 10).encode())
        unfinished = True
    elif framing == "negative-length":
        lines.append(b"Content-Length: -" + str(len(body)).encode())
    elif framing == "two-lengths":
        lines += [b"Content-Length: " + str(len(body)).encode(), b"Content-Length: 3"]
    elif framing == "bad-chunks":
        lines.append(b"Transfer-Encoding: chunked")
        body = b"zz\r\n" + body + b"\r\n"
        unfinished = True
    else:
        lines += [b"Content-Length: " + str(len(body)).encode(), b"Transfer-Encoding: chunked"]
        unfinished = True
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body, unfinished


# -- the sentence -------------------------------------------------------------------------------

def check_answer(answer: bytes) -> None:
    if not answer:
        SEEN["closed"] = SEEN.get("closed", 0) + 1
        return  # closed without a word: allowed (a head the parser cannot even read)
    assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:200]
    status = int(answer[9:12])
    SEEN[str(status)] = SEEN.get(str(status), 0) + 1
    head, _, body = answer.partition(b"\r\n\r\n")
    if status == 501 and b"content-type: text/html" in head.lower():
        return  # the fake child's own page for a method it lacks (HEAD, PUT), relayed as it is
    assert status < 500, answer[:500]
    if status >= 400 and b"application/json" in head.lower() and body:  # HEAD: no body
        error = json.loads(body)["error"]
        assert error["code"] == status and error["message"] and error["type"], body[:300]
    assert b"\r\nx:" not in head.lower() and b"\r\nx-injected" not in head.lower()


@settings(max_examples=CASES, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                     HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])
@given(case=requests())
@example(case=(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False))
@example(case=(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n", True))
@example(case=(b"GET /props?model=tiny-xs%00 HTTP/1.1\r\nConnection: close\r\n\r\n", False))
@example(case=(b"GET /\xff\x00 HTTP/1.1\r\nConnection: close\r\n\r\n", False))
def test_any_bytes_get_an_answer_below_500_or_a_close(router: Router,
                                                      case: tuple[bytes, bool]) -> None:
    data, unfinished = case
    try:
        answer = exchange(router, data, half_close=unfinished)
    except socket.timeout:
        pytest.fail(f"no answer and no close in 10 s for {data[:300]!r}")
    check_answer(answer)


def test_the_router_still_serves_and_did_not_grow(router: Router) -> None:
    """After the fuzzing (this runs after it, in file order): serving, and its resident memory
    well within what the limits allow."""
    rss = psutil.Process(router.proc.pid).memory_info().rss
    grown = rss - router.rss0  # type: ignore[attr-defined]
    assert grown < 64 * 1024 * 1024, f"grew {grown / 2**20:.0f} MiB"
    assert router.client.get("/health").status_code == 200
    print(f"\nfuzzed cases by outcome: {dict(sorted(SEEN.items()))}")
