"""``python -m refimpl.child``: parse, announce ``loading``, bind, start loading, then the rest.

With ``LLAMA_SERVER_CHILD_MODE=download`` it is a download child instead (``download.py``).

Everything before the first heavy import is cheap, so a bad flag or a busy port is reported in
milliseconds, and the router hears ``loading`` before llama.cpp is even imported. The model then
starts loading on a thread (llama.cpp releases the GIL while it reads tensors) while the HTTP
stack (Starlette, pydantic request models, uvicorn) is imported on this one.
The process ends with ``os._exit``: a generation still running on a worker thread after the
graceful-shutdown timeout must not keep the process alive, and llama-cpp-python's finalizers are
not safe to run at interpreter teardown.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from refimpl.child.announcer import Announcer
from refimpl.child.cli import is_router_child, parse_options
from refimpl.core.protocol import LoadingState

log = logging.getLogger("refimpl.child")


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def main() -> int:
    if os.environ.get("LLAMA_SERVER_CHILD_MODE") == "download":
        from refimpl.child.download import main as download_main
        return download_main()
    options = parse_options()
    announcer = Announcer.for_router() if is_router_child() else Announcer.silent()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s child[%(process)d] %(levelname)s %(message)s")
    if options.no_effect and not is_router_child():  # a router has listed them already
        log.info("accepted, no effect here: %s", " ".join(options.no_effect))
    announcer.send(LoadingState())
    try:
        sock = _listen(options.host, options.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", options.host, options.port, exc.strerror or exc)
        return 1
    from refimpl.child.runtime import ChildRuntime

    runtime = ChildRuntime(options, announcer)
    runtime.start_loading()
    import asyncio

    from refimpl.child.server import serve

    return asyncio.run(serve(runtime, sock))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
