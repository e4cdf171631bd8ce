"""The child process around the app: serve on a bound socket, load, announce, watch stdin, exit.

Order matters to the router. The listening socket is bound and the load started (by ``__main__``)
before this module is even imported, the weights load while uvicorn answers ``/health`` with 503, and
``ready`` goes out only once the model is loaded *and* uvicorn is accepting on that socket, so a
router that proxies the moment it reads ``ready`` never meets a refused connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading

import uvicorn

from refimpl.child.app import build_app
from refimpl.child.runtime import ChildRuntime
from refimpl.core.protocol import EXIT_COMMAND, LineReader

log = logging.getLogger("refimpl.child")

GRACEFUL_SHUTDOWN_SECONDS = 3  # in-flight responses get this long after an exit request
_EXIT_LINE = EXIT_COMMAND.rstrip(b"\n")


def _watch_stdin(runtime: ChildRuntime) -> None:
    """Exit on the router's exit command, or on EOF: a router that died closes our stdin."""
    reader = LineReader()
    while True:
        try:
            chunk = os.read(0, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            runtime.request_exit("stdin closed: the router is gone")
            return
        for line in reader.feed(chunk):
            if line == _EXIT_LINE:
                runtime.request_exit("exit command from the router")
                return


async def serve(runtime: ChildRuntime, sock: socket.socket) -> int:
    """Serve ``runtime``'s model on ``sock`` until asked to exit; the process exit status."""
    options = runtime.options
    runtime.attach_loop(asyncio.get_running_loop())
    config = uvicorn.Config(build_app(runtime), lifespan="off", log_config=None,
                            access_log=options.verbose,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    server = uvicorn.Server(config)

    def stop_serving() -> None:
        server.should_exit = True

    runtime.stop_serving = stop_serving
    if runtime.announcer.active:
        threading.Thread(target=_watch_stdin, args=(runtime,), name="stdin-watcher",
                         daemon=True).start()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    idle: asyncio.Task[None] | None = None
    if await runtime.load_first() and not runtime.exit_requested.is_set():
        while not server.started and not serving.done():
            await asyncio.sleep(0.001)
        if server.started and not runtime.exit_requested.is_set():
            host, port = sock.getsockname()[:2]
            log.info("serving %r on http://%s:%d", options.alias, host, port)
            runtime.announce_ready()
            if options.sleep_idle_seconds > 0:
                idle = asyncio.create_task(runtime.sleep_when_idle(options.sleep_idle_seconds))
    else:
        stop_serving()
    await serving
    if idle is not None:
        idle.cancel()
    # The weights are not freed here: a generation the graceful shutdown gave up on may still be
    # running on a worker thread. The process exit (os._exit, in __main__) frees them.
    return runtime.exit_code
