"""uvicorn's HTTP protocol with the router's answers and limits.

- A request its parser refuses (an unknown method token, a bare CR in a header, binary garbage)
  is answered in the router's error shape, ``{"error": {"code": 400, "message", "type":
  "invalid_request_error"}}``, instead of uvicorn's plain text. The router's app never sees such a
  request, so this is the only place to say it.
- **Head size** (uvicorn's ``h11_max_incomplete_event_size``, which httptools does not honour):
  a request line and headers longer than that get 431 and a closed connection as soon as the
  limit is passed, so an unfinished 64 MB header costs the router the limit, not 64 MB.
- **Head timeout**: the whole head of a request must arrive within ``head_timeout`` seconds of
  the connection opening (or of the previous answer on a kept-alive connection), however slowly
  it trickles in: a started head gets 408, a connection that sent nothing is closed. uvicorn
  times out only idle kept-alive connections (``timeout_keep_alive``, kept), never a head.
- **Concurrency** (uvicorn's ``limit_concurrency``): past that many open connections or running
  requests, a new request gets 503 with ``Retry-After`` and a closed connection, in the error
  shape, at once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

MAX_HEAD = 64 * 1024  # bytes of request line and headers (h11's own default is 16 KiB)
HEAD_TIMEOUT = 30.0  # seconds for a whole head (nginx's client_header_timeout is 60 s)
KEEP_ALIVE_TIMEOUT = 5.0  # seconds a kept-alive connection may idle (uvicorn's, cpp-httplib's)
MAX_CONCURRENCY = 1000  # open connections or running requests

_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
_KINDS = {503: "unavailable_error"}


def answer(status: int, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer in the router's error shape that closes the connection."""
    body = json.dumps({"error": {"code": status, "message": message,
                                 "type": _KINDS.get(status, "invalid_request_error")}}).encode()
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode()
            + b"content-type: application/json\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\nconnection: close\r\n" + extra + b"\r\n" + body)


def _answer(msg: str) -> bytes:
    return answer(400, f"malformed HTTP request: {msg}")


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """The answer past the concurrency limit (uvicorn's own is plain text)."""
    body = json.dumps({"error": {"code": 503, "message": "the router has too many connections "
                                 "or requests at once; retry shortly",
                                 "type": "unavailable_error"}}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


if HttpToolsProtocol is not None:
    class JsonErrorsHttpTools(HttpToolsProtocol):
        head_timeout = HEAD_TIMEOUT

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.max_head = self.config.h11_max_incomplete_event_size or MAX_HEAD
            self.max_concurrency = self.limit_concurrency
            self.limit_concurrency = None  # checked here, answered in the error shape
            self._head: int | None = 0  # bytes of the head so far; None: not in a head
            self._head_timer: asyncio.TimerHandle | None = None

        def send_400_response(self, msg: str) -> None:
            self._refuse(_answer(msg))

        def _refuse(self, data: bytes) -> None:
            self._stop_head_timer()
            if not self.transport.is_closing():
                self.transport.write(data)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head is not None and not self.transport.is_closing():
                self._head += len(data)  # whole chunks: at most one read over the limit
                if self._head > self.max_head:
                    self._refuse(answer(431, f"the request line and headers are longer than "
                                             f"the limit of {self.max_head} bytes"))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head is None:
                self._head = 0

        def on_headers_complete(self) -> None:
            self._head = None
            self._stop_head_timer()
            busy = self.max_concurrency is not None and (
                len(self.connections) > self.max_concurrency
                or len(self.tasks) >= self.max_concurrency)
            app, self.app = self.app, (_busy if busy else self.app)
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self.pipeline and self._head is None:
                self._head = 0
                self._start_head_timer()

        def _start_head_timer(self) -> None:
            self._stop_head_timer()
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._head is None or self.transport.is_closing():
                return
            if self._head == 0:  # nothing sent: an idle connection just closes
                self.transport.close()
            else:
                self._refuse(answer(408, f"the request line and headers did not arrive "
                                         f"within {self.head_timeout:g} seconds"))

    PROTOCOL: type = JsonErrorsHttpTools
else:  # pragma: no cover - only then is h11 imported (1 MiB of the router's memory)
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorsH11(H11Protocol):
        """The fallback without httptools: uvicorn's own limits (h11 answers an over-long head with
        400, uvicorn's 503 is plain text, no head timeout)."""

        def send_400_response(self, msg: str) -> None:
            self.transport.write(_answer(msg))
            self.transport.close()

    PROTOCOL = JsonErrorsH11


def protocol(head_timeout: float = HEAD_TIMEOUT) -> type:
    """The protocol class for uvicorn's ``http=``, with its head timeout."""
    if HttpToolsProtocol is None:  # pragma: no cover
        return PROTOCOL
    return type("RouterHttp", (PROTOCOL,), {"head_timeout": head_timeout})
