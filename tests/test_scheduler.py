"""The scheduler after a model's spec changed (a reload, a finished download): what fits is
decided from the spec the model has now, never from one it had before."""

from __future__ import annotations

from refimpl.core import (ChildExited, ChildOutput, ModelSpec, Reply, RequestArrived,
                          ResponseEnded, RouterConfig, RouterCore, SendExit, Spawn, UnloadAsked)
from refimpl.core import errors
from refimpl.core.protocol import ReadyState, format_message

GiB = 1024**3
READY = format_message(ReadyState({"id": "x"}))


def two_models(a: int, b: int = 4) -> RouterCore:
    return RouterCore(RouterConfig(models=(ModelSpec("a", memory={"gpu0": a * GiB}),
                                           ModelSpec("b", memory={"gpu0": b * GiB})),
                                   models_max=2, devices={"gpu0": 16 * GiB}))


def load_serve_unload(core: RouterCore, req: int, now: float) -> None:
    """Load ``a`` for one request, serve it, unload it: the scheduler has looked at ``a``."""
    instance = core._next_instance
    assert Spawn(instance, "a") in core.handle(RequestArrived(req, "a"), now)
    core.handle(ChildOutput(instance, READY), now + 1)
    core.handle(ResponseEnded(req), now + 2)
    assert SendExit(instance) in core.handle(UnloadAsked(req + 1, "a"), now + 3)
    core.handle(ChildExited(instance, 0), now + 4)


def test_a_model_that_grew_past_every_device_is_refused_and_blocks_nobody() -> None:
    core = two_models(10)
    load_serve_unload(core, 1, 0.0)
    core.add_model(ModelSpec("a", memory={"gpu0": 20 * GiB}))  # a reload: it grew past gpu0
    [reply] = [c for c in core.handle(RequestArrived(3, "a"), 10.0) if isinstance(c, Reply)]
    assert (reply.req, reply.status, reply.kind) == (3, 507, errors.INSUFFICIENT_MEMORY)
    assert not core.scheduler.queue
    assert any(isinstance(c, Spawn) for c in core.handle(RequestArrived(4, "b"), 10.1))


def test_a_model_that_shrank_to_fit_loads() -> None:
    core = two_models(20)
    [reply] = [c for c in core.handle(RequestArrived(1, "a"), 0.0) if isinstance(c, Reply)]
    assert reply.status == 507
    core.add_model(ModelSpec("a", memory={"gpu0": 10 * GiB}))  # a reload: now it fits
    assert any(isinstance(c, Spawn) for c in core.handle(RequestArrived(2, "a"), 1.0))
