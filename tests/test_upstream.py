"""The proxy's HTTP/1.1 client to the children (``refimpl/router/upstream.py``), against a real
server on loopback that answers as each test scripts it, on asyncio and on trio."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import pytest

from refimpl.router.upstream import ONE_WRITE, BrokenAnswer, ConnectFailed, Upstream

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@dataclass
class Seen:
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body)


Answer = Callable[[int, anyio.abc.SocketStream], Awaitable[bool]]  # False: close


async def read_request(stream: anyio.abc.SocketStream, buffer: bytearray
                       ) -> tuple[bytes, bytes] | None:
    while b"\r\n\r\n" not in buffer:
        try:
            buffer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        if name.lower() == b"content-length":
            length = int(value)
    buffer[:] = rest
    while len(buffer) < length:
        buffer += await stream.receive()
    body = bytes(buffer[:length])
    del buffer[:length]
    return head, body


async def serve(answer: Answer, seen: Seen, task_status: Any) -> None:
    """Each request on each connection gets ``answer(request number, stream)``."""
    async def connection(stream: anyio.abc.SocketStream) -> None:
        seen.connections += 1
        buffer = bytearray()
        async with stream:
            while (request := await read_request(stream, buffer)) is not None:
                seen.requests.append(request)
                if not await answer(len(seen.requests), stream):
                    return

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    task_status.started(port)
    await listener.serve(connection)


def sized(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def ok(n: int, stream: anyio.abc.SocketStream) -> bool:
    await stream.send(sized(b"answer %d" % n))
    return True


@contextlib.asynccontextmanager
async def served(answer: Answer) -> AsyncIterator[tuple[int, Seen]]:
    """The server answering with ``answer`` while the block runs: its port and what it saw."""
    seen = Seen()
    async with anyio.create_task_group() as tg:
        yield await tg.start(serve, answer, seen), seen
        tg.cancel_scope.cancel()


async def exchange(answer: Answer, *bodies: bytes, upstream: Upstream | None = None
                   ) -> tuple[Seen, list[bytes]]:
    """Send a POST per body with one client; the answers read whole."""
    client = upstream or Upstream()
    got = []
    async with served(answer) as (port, seen):
        for body in bodies:
            a = await client.send("POST", "127.0.0.1", port, "/x", [], body)
            got.append(await a.read())
            await a.aclose()
        await client.aclose()
    return seen, got


async def test_a_kept_alive_connection_carries_the_next_request() -> None:
    seen, got = await exchange(ok, b"one", b"two", b"three")
    assert got == [b"answer 1", b"answer 2", b"answer 3"]
    assert seen.connections == 1
    assert [body for _, body in seen.requests] == [b"one", b"two", b"three"]
    assert seen.requests[0][0].startswith(b"POST /x HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"content-length: 3" in seen.requests[0][0]


async def test_a_connection_the_child_closed_while_it_idled_is_replaced() -> None:
    async def once(n: int, stream: anyio.abc.SocketStream) -> bool:
        await stream.send(sized(b"answer %d" % n))  # keep-alive said, then closed
        return False

    seen, got = await exchange(once, b"one", b"two")
    assert got == [b"answer 1", b"answer 2"]
    assert seen.connections == 2 and len(seen.requests) == 2


async def test_an_answer_that_says_close_is_not_kept() -> None:
    async def close(n: int, stream: anyio.abc.SocketStream) -> bool:
        await stream.send(sized(b"bye", b"connection: close\r\n"))
        return True  # the server would go on: the client must not

    seen, got = await exchange(close, b"a", b"b")
    assert got == [b"bye", b"bye"] and seen.connections == 2


async def test_a_chunked_answer_arrives_dechunked_piece_by_piece() -> None:
    async def chunked(n: int, stream: anyio.abc.SocketStream) -> bool:
        await stream.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                          b"content-type: text/event-stream\r\n\r\n")
        for piece in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
            await stream.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            await anyio.sleep(0.01)
        await stream.send(b"0\r\n\r\n")
        return True

    seen, got = await exchange(chunked, b"", b"")
    assert got == [b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"] * 2
    assert seen.connections == 1  # read to its end: kept


async def test_an_answer_broken_off_is_an_error_and_its_connection_is_not_kept() -> None:
    async def broken(n: int, stream: anyio.abc.SocketStream) -> bool:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nten bytes.")
        return False

    client = Upstream()
    async with served(broken) as (port, _):
        a = await client.send("GET", "127.0.0.1", port, "/", [], b"")
        assert a.status == 200
        with pytest.raises(BrokenAnswer, match="middle of its answer"):
            await a.read()
        await a.aclose()
        assert client._idle == {}


async def test_an_answer_left_unread_closes_its_connection() -> None:
    async def endless(n: int, stream: anyio.abc.SocketStream) -> bool:
        if n > 1:
            return await ok(n, stream)
        await stream.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        return True  # and no more: the client leaves

    client = Upstream()
    async with served(endless) as (port, seen):
        a = await client.send("GET", "127.0.0.1", port, "/", [], b"")
        async for piece in a:
            assert piece == b"first"
            break
        await a.aclose()  # not read to its end: the rest may still come on it
        b = await client.send("GET", "127.0.0.1", port, "/", [], b"")
        assert await b.read() == b"answer 2"
        await b.aclose()
        assert seen.connections == 2


async def test_bytes_that_are_not_http_are_an_error() -> None:
    async def garbage(n: int, stream: anyio.abc.SocketStream) -> bool:
        await stream.send(b"\x00\x01 not an answer\r\n\r\n")
        return True

    async with served(garbage) as (port, _):
        with pytest.raises(BrokenAnswer, match="not HTTP"):
            await Upstream().send("GET", "127.0.0.1", port, "/", [], b"")


async def test_an_interim_answer_is_skipped() -> None:
    async def interim(n: int, stream: anyio.abc.SocketStream) -> bool:
        await stream.send(b"HTTP/1.1 100 Continue\r\n\r\n" + sized(b"final"))
        return True

    seen, got = await exchange(interim, b"x", b"y")
    assert got == [b"final", b"final"] and seen.connections == 1


async def test_a_large_body_arrives_whole() -> None:
    body = bytes(range(256)) * (3 * ONE_WRITE // 256 + 7)
    seen, got = await exchange(ok, body)
    assert seen.requests[0][1] == body and got == [b"answer 1"]


async def test_a_connection_idle_past_the_limit_is_not_used_again() -> None:
    seen, got = await exchange(ok, b"a", b"b", upstream=Upstream(idle_limit=-1.0))
    assert got == [b"answer 1", b"answer 2"] and seen.connections == 2


async def test_a_refused_connection_is_connect_failed() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nobody listens there now
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
        await Upstream().send("GET", "127.0.0.1", port, "/", [], b"")


async def test_a_name_is_looked_up() -> None:
    async with served(ok) as (port, _):
        a = await Upstream().send("GET", "localhost", port, "/", [], b"")
        assert await a.read() == b"answer 1"
        await a.aclose()

