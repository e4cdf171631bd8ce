"""llama-server's router test hook ``LLAMA_SERVER_DEBUG_FAKE_TIMING``: delays that widen races.

Upstream (tools/server/server-models.cpp) reads the variable once at start; when it is set to
anything non-empty, ``server_models::load`` sleeps 2 s before it does anything (a request's load,
``POST /models/load``, a download's start), and ``proxy_request`` sleeps 2 s after counting the
request against its model, so the model is busy while nothing is sent. Its own router tests use
it to hold those windows open. Here the same two delays: before a child (or download child) is
started, and after a request is routed to its child and before it is sent. Neither holds the
driver: other requests keep making progress, as upstream's sleep holds no lock.
"""

from __future__ import annotations

import anyio

from refimpl.core.commands import Spawn

from .driver import Child, Spawner

FAKE_DELAY = 2.0  # seconds, as upstream


def delayed(spawner: Spawner, seconds: float = FAKE_DELAY) -> Spawner:
    """``spawner``, each start ``seconds`` later (the driver runs each start in a task of its
    own, and queues stops that arrive meanwhile)."""
    async def spawn(command: Spawn) -> Child:
        await anyio.sleep(seconds)
        return await spawner(command)
    return spawn
