"""Catalog changes in the core (``CatalogChanged``: a reload of the sources, a download's spec):
what changes, what is unloaded, and what is refused as a whole."""

from __future__ import annotations

from refimpl.core import errors
from refimpl.core.commands import Forward, Kill, Publish, Reply, SendExit, Spawn
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.events import (CatalogChanged, ChildExited, ChildOutput, RequestArrived,
                                 ResponseEnded)
from refimpl.core.lifecycle import Status
from refimpl.core.protocol import ReadyState, format_message
from refimpl.core.router import RouterCore

GiB = 1024**3
A = ModelSpec("A", aliases=("a1",), stop_timeout=5.0, launch=("a.gguf",))
B = ModelSpec("B", stop_timeout=5.0, launch=("b.gguf",))
READY = format_message(ReadyState({}))


def loaded(core: RouterCore, name: str, req: int = 1) -> int:
    """Load ``name`` for request ``req`` and end its response; the child's instance."""
    spawn = [c for c in core.handle(RequestArrived(req, name), 0.0) if isinstance(c, Spawn)][0]
    out = core.handle(ChildOutput(spawn.instance, READY), 1.0)
    assert Forward(req, name, spawn.instance) in out
    core.handle(ResponseEnded(req), 2.0)
    return spawn.instance


def test_a_name_of_two_models_refuses_the_whole_change() -> None:
    core = RouterCore(RouterConfig(models=(A, B), models_max=2))
    clash = ModelSpec("B", aliases=("a1",), launch=("b.gguf",))
    out = core.handle(CatalogChanged((A, clash, ModelSpec("C")), (), 7), 0.0)
    assert [c for c in out if isinstance(c, Reply)] == [
        Reply(7, 400, errors.INVALID_REQUEST,
              "name 'a1' of model 'B' already belongs to model 'A'")]
    assert "C" not in core.models and core.resolve("a1") == "A"  # nothing changed


def test_an_alias_may_move_between_models_in_one_change() -> None:
    core = RouterCore(RouterConfig(models=(A, B)))
    moved = (ModelSpec("A", launch=A.launch), ModelSpec("B", aliases=("a1",), launch=B.launch))
    out = core.handle(CatalogChanged(moved, (), 1), 0.0)
    assert Reply(1, 200, errors.OK) in out and core.resolve("a1") == "B"


def test_a_running_model_whose_launch_changed_is_unloaded_and_loads_anew() -> None:
    core = RouterCore(RouterConfig(models=(A, B), models_max=2))
    inst = loaded(core, "A")
    changed = ModelSpec("A", aliases=("a1",), stop_timeout=5.0, launch=("a-v2.gguf",))
    out = core.handle(CatalogChanged((changed, B), (), 9), 3.0)
    assert SendExit(inst) in out and Reply(9, 200, errors.OK) in out
    core.handle(ChildExited(inst, 0), 3.1)
    assert core.models["A"].status is Status.UNLOADED and not core.models["A"].failed
    assert any(isinstance(c, Spawn) for c in core.handle(RequestArrived(2, "A"), 4.0))


def test_a_spec_change_without_a_new_launch_waits_for_the_next_load() -> None:
    core = RouterCore(RouterConfig(models=(A, B), models_max=2))
    loaded(core, "A")
    bigger = ModelSpec("A", aliases=("a1",), memory={"gpu": GiB}, stop_timeout=5.0,
                       launch=A.launch)
    out = core.handle(CatalogChanged((bigger, B), (), 9), 3.0)
    assert not [c for c in out if isinstance(c, (SendExit, Kill))]
    assert core.models["A"].spec == bigger


def test_a_vanished_model_is_unloaded_then_forgotten_and_its_queue_answered() -> None:
    core = RouterCore(RouterConfig(models=(A, B), models_max=1))
    inst = loaded(core, "A")
    core.handle(RequestArrived(2, "A"), 2.5)  # in flight on A
    core.handle(RequestArrived(3, "B"), 2.6)  # queued behind A's drain
    out = core.handle(CatalogChanged((A,), ("B",), 4), 3.0)
    assert Reply(3, 404, errors.REMOVED, "model 'B' is no longer in the model sources") in out
    assert core.resolve("B") is None and "B" not in core.models
    assert Publish("B", "model_remove", {}) in out
    out = core.handle(CatalogChanged((B,), ("A",), 5), 4.0)
    assert SendExit(inst) in out and core.resolve("a1") is None and "A" in core.models
    core.handle(ResponseEnded(2), 4.5)
    out = core.handle(ChildExited(inst, 0), 5.0)
    assert Publish("A", "model_remove", {}) in out and "A" not in core.models


def test_a_model_too_big_after_a_change_is_refused_and_does_not_block_the_queue() -> None:
    """The fits-alone answer is not cached: a model that grew past every device gets 507 and
    the models queued behind it still load."""
    specs = (ModelSpec("A", memory={"gpu": 4 * GiB}, launch=("v1",)),
             ModelSpec("B", memory={"gpu": 4 * GiB}))
    core = RouterCore(RouterConfig(models=specs, models_max=0, devices={"gpu": 10 * GiB}))
    inst = loaded(core, "A")  # A fits alone: a cache would remember that
    core.handle(CatalogChanged((ModelSpec("A", memory={"gpu": 20 * GiB}, launch=("v2",)),
                                specs[1]), (), 3), 3.0)
    core.handle(ChildExited(inst, 0), 3.5)
    out = core.handle(RequestArrived(4, "A"), 4.0)
    assert [c for c in out if isinstance(c, Reply)] == [
        Reply(4, 507, errors.INSUFFICIENT_MEMORY, "model 'A' needs more memory than a device has")]
    assert core.handle(RequestArrived(5, "B"), 4.1)[-1] == Spawn(2, "B")


def test_an_alias_moved_to_a_model_listed_before_its_old_owner_stays_with_it() -> None:
    """Found by the state machine: the old owner, given its new spec after the new one, used to
    drop the alias it no longer has even though another model now had it."""
    core = RouterCore(RouterConfig(models=(ModelSpec("A"), ModelSpec("B"), ModelSpec("C"))))
    core.handle(CatalogChanged((ModelSpec("A", aliases=("x",)), ModelSpec("B"),
                                ModelSpec("C")), (), 1), 0.0)
    out = core.handle(CatalogChanged((ModelSpec("B"), ModelSpec("C", aliases=("x",)),
                                      ModelSpec("A")), (), 2), 0.0)
    assert Reply(2, 200, errors.OK) in out and core.resolve("x") == "C"


def test_the_names_of_a_model_that_vanished_are_free_while_its_child_exits() -> None:
    """Found by the memory state machine (mutation profile) once reloads read the sources whole:
    A vanished while running; before its child had exited, a reload gave its alias to C. The
    alias no longer resolved to A, yet the clash check still read A's spec and refused C."""
    core = RouterCore(RouterConfig(models=(A, B), models_max=2))
    inst = loaded(core, "A")
    out = core.handle(CatalogChanged((B,), (), 1, reload=True), 3.0)
    assert Reply(1, 200, errors.OK) in out and SendExit(inst) in out  # A vanished, stopping
    assert core.resolve("a1") is None and "A" in core.models  # until its child has exited
    c = ModelSpec("C", aliases=("a1",), launch=("c.gguf",))
    out = core.handle(CatalogChanged((B, c), (), 2, reload=True), 3.5)
    assert Reply(2, 200, errors.OK) in out, out
    assert core.resolve("a1") == "C"
    core.handle(ChildExited(inst, 0), 4.0)
    assert "A" not in core.models and core.resolve("a1") == "C"
    assert Publish("*", "models_reload") in out
