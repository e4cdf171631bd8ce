"""The proxy's HTTP/1.1 client to the children: pooled keep-alive connections, parsed by httptools.

Why not httpx (which the proxy used before): measured with ``bench/proxy.py`` and
``bench/load.py``, httpx with httpcore was half of the router's Python time per proxied request
and 9.6 MiB of its memory (with h11, idna, certifi and an SSL context) for a client that only
ever speaks plain HTTP/1.1 to 127.0.0.1. This one does only that: one request at a time per
connection, the head and a small body in one write, the answer's body handed on as it arrives
(de-chunked), the connection kept for the next request to the same child when the answer said
keep-alive and was read to its end.

The connections come from ``connect(host, port)``, an anyio byte stream: TCP by default; the
whole-router simulation gives streams to its in-memory children (``simulator/whole.py``), so the
pool and the parsing run there too.

Errors are ``UpstreamError``: ``ConnectFailed`` (the child cannot be reached: nothing was sent)
and ``BrokenAnswer`` (the connection broke, or the child's bytes were not HTTP). A kept-alive
connection that the child closed while it idled fails before any byte of an answer: the request
is sent once more, on a new connection. A connection idle for longer than ``idle_limit`` is not
used again (the children close theirs after 5 s).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import errno
import os
import socket

import anyio
import anyio.abc
import httptools

Connect = Callable[[str, int], Awaitable[anyio.abc.ByteStream]]
READ = 65536
IDLE_PER_CHILD = 16  # kept-alive connections kept per child; more are closed as they come back
ONE_WRITE = 64 * 1024  # a body up to this is sent with the head in one write
BROKEN = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)  # a connection's end


class UpstreamError(Exception):
    """The child's answer could not be had."""


class ConnectFailed(UpstreamError):
    """No connection to the child (refused, timed out): the request was not sent."""


class BrokenAnswer(UpstreamError):
    """The connection broke or carried something that is not an HTTP answer."""


async def tcp(host: str, port: int) -> anyio.abc.ByteStream:
    """A TCP connection to ``host``: an address in numbers (the children's, 127.0.0.1) is
    connected to without a name lookup, which ``anyio.connect_tcp`` always makes (on a thread
    of the loop's executor, started for it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        return await anyio.connect_tcp(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = sock.connect_ex((host, port))
        if error == errno.EINPROGRESS:
            await anyio.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        return await anyio.abc.SocketStream.from_socket(sock)
    except BaseException:
        sock.close()
        raise


class _Parsed:
    """httptools' callbacks for one answer."""

    __slots__ = ("status", "headers", "chunks", "head_done", "done", "keep_alive", "parser",
                 "interim")

    def __init__(self) -> None:
        self.parser: Any = None
        self.keep_alive = False
        self.interim = False  # in an interim answer (100 Continue): the real one follows
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.head_done = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:
            self.interim = True
            self.headers = []
        else:
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.done = True
        # asked now: once the message is over the parser is ready for the next and says False;
        # then the parser is let go (it holds this object: a cycle only the collector ends)
        self.keep_alive = self.parser.should_keep_alive()
        self.parser = None


class _Connection:
    __slots__ = ("stream", "key", "idle_since")

    def __init__(self, stream: anyio.abc.ByteStream, key: tuple[str, int]) -> None:
        self.stream = stream
        self.key = key
        self.idle_since = 0.0

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass


class Answer:
    """A child's answer: ``status`` and ``headers`` read; its body is read with ``read()`` (whole)
    or ``async for`` (as it arrives). ``aclose()`` ends it: the connection goes back to the pool
    if the answer was read to its end and may be kept, else it is closed."""

    def __init__(self, upstream: Upstream, conn: _Connection, parser: Any, parsed: _Parsed,
                 head_only: bool) -> None:
        self._upstream = upstream
        self._conn: _Connection | None = conn
        self._parser = parser
        self._parsed = parsed
        self.status = parsed.status
        self.headers = parsed.headers
        self._over = parsed.done or head_only
        self._keep = not head_only

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case)."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parsed = self._parsed
        while True:
            if parsed.chunks:
                chunks, parsed.chunks = parsed.chunks, []
                for chunk in chunks:
                    yield chunk
            if self._over or parsed.done:
                self._over = True
                return
            await self._read_more()

    async def _read_more(self) -> None:
        conn = self._conn
        if conn is None:
            raise BrokenAnswer("the answer was closed")
        try:
            data = await conn.stream.receive(READ)
        except anyio.EndOfStream:
            if self.header(b"content-length") is None and not self._chunked():
                self._over = True  # a body that runs until the connection closes
                self._keep = False
                return
            raise BrokenAnswer("the child closed the connection in the middle of its answer") \
                from None
        except BROKEN as exc:
            raise BrokenAnswer(f"the connection to the child broke: {exc!r}") from None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise BrokenAnswer(f"the child's answer is not HTTP: {exc}") from None

    def _chunked(self) -> bool:
        value = self.header(b"transfer-encoding")
        return value is not None and b"chunked" in value.lower()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        self._parsed.parser = None
        if conn is None:
            return
        if self._over and self._keep and self._parsed.keep_alive:
            self._upstream._give_back(conn)
        else:
            await conn.close()


class Upstream:
    """Pooled HTTP/1.1 connections to the children, by host and port."""

    def __init__(self, connect: Connect = tcp, connect_timeout: float = 10.0,
                 idle_limit: float = 2.0) -> None:
        self.connect = connect
        self.connect_timeout = connect_timeout
        self.idle_limit = idle_limit
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._stale: list[_Connection] = []  # to close (idle too long), at the next send
        self._swept = 0.0

    async def send(self, method: str, host: str, port: int, target: str,
                   headers: list[tuple[bytes, bytes]], body: bytes | bytearray) -> Answer:
        """Send a request (``target``: the path and query, as they go on the wire; ``headers``
        without Host, Content-Length and hop-by-hop ones) and read its answer's head."""
        head = [f"{method} {target} HTTP/1.1\r\nhost: {host}:{port}\r\n".encode("ascii")]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        if body or method not in ("GET", "HEAD", "DELETE"):
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        wire = b"".join(head)
        key = (host, port)
        conn = self._take(key)
        while self._stale:
            await self._stale.pop().close()
        if conn is not None:
            answer = await self._exchange(conn, wire, body, method, reused=True)
            if answer is not None:
                return answer
        conn = await self._open(key)
        answer = await self._exchange(conn, wire, body, method, reused=False)
        assert answer is not None
        return answer

    async def _open(self, key: tuple[str, int]) -> _Connection:
        try:
            with anyio.fail_after(self.connect_timeout):
                stream = await self.connect(*key)
        except TimeoutError:
            raise ConnectFailed(f"connecting to {key[0]}:{key[1]} timed out after "
                                f"{self.connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {key[0]}:{key[1]}: {exc}") from None
        return _Connection(stream, key)

    async def _exchange(self, conn: _Connection, wire: bytes, body: bytes | bytearray,
                        method: str, reused: bool) -> Answer | None:
        """The request sent on ``conn`` and its answer's head read; None when a reused
        connection turned out closed before any byte came back (send it on a new one)."""
        parsed = _Parsed()
        parsed.parser = parser = httptools.HttpResponseParser(parsed)
        got = False
        try:
            try:
                if len(body) <= ONE_WRITE:
                    await conn.stream.send(wire + body if body else wire)
                else:
                    await conn.stream.send(wire)
                    view = memoryview(body)
                    for start in range(0, len(body), ONE_WRITE):
                        await conn.stream.send(bytes(view[start:start + ONE_WRITE]))
                while not parsed.head_done:
                    data = await conn.stream.receive(READ)
                    got = True
                    parser.feed_data(data)
            except anyio.EndOfStream:
                if reused and not got:
                    await conn.close()
                    return None
                raise BrokenAnswer("the child closed the connection before its answer") \
                    from None
            except BROKEN as exc:
                if reused and not got:
                    await conn.close()
                    return None
                raise BrokenAnswer(f"the connection to the child broke: {exc!r}") from None
            except httptools.HttpParserError as exc:
                raise BrokenAnswer(f"the child's answer is not HTTP: {exc}") from None
        except BaseException:
            await conn.close()
            raise
        return Answer(self, conn, parser, parsed, head_only=method == "HEAD")

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = anyio.current_time()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since <= self.idle_limit:
                return conn
            self._stale.append(conn)
        return None

    def _give_back(self, conn: _Connection) -> None:
        now = conn.idle_since = anyio.current_time()
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < IDLE_PER_CHILD:
            idle.append(conn)
        else:
            self._stale.append(conn)
        if now - self._swept > self.idle_limit:
            self._swept = now
            self._sweep()

    def _sweep(self) -> None:
        """Let go of the connections idle for too long (to children that are gone, mostly):
        closed at the next send."""
        now = anyio.current_time()
        for key in list(self._idle):
            kept = []
            for conn in self._idle[key]:
                if now - conn.idle_since <= self.idle_limit:
                    kept.append(conn)
                else:
                    self._stale.append(conn)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conn in [*self._stale, *(c for conns in idle.values() for c in conns)]:
            await conn.close()
        self._stale = []
