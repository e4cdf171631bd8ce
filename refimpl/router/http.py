"""uvicorn's HTTP protocol with one change: a request its parser refuses (an unknown method token,
a bare CR in a header, binary garbage) is answered in the router's error shape,
``{"error": {"code": 400, "message", "type": "invalid_request_error"}}``, instead of uvicorn's
plain text. The router's app never sees such a request, so this is the only place to say it.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def _answer(msg: str) -> bytes:
    body = json.dumps({"error": {"code": 400, "message": f"malformed HTTP request: {msg}",
                                 "type": "invalid_request_error"}}).encode()
    return (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            + body)


class JsonErrorsH11(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        self.transport.write(_answer(msg))
        self.transport.close()


if HttpToolsProtocol is not None:
    class JsonErrorsHttpTools(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            self.transport.write(_answer(msg))
            self.transport.close()

    PROTOCOL: type = JsonErrorsHttpTools
else:  # pragma: no cover
    PROTOCOL = JsonErrorsH11
