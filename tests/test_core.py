"""The router core driven by hand: events in, commands out, no threads, no sleeps, no ports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from refimpl.core import (ChildExited, ChildOutput, ClientGone, Forward, Kill, LoadAsked,
                          ModelSpec, Publish, Reply, RequestArrived, ResponseEnded, RouterConfig,
                          RouterCore, RouterStarted, SendExit, Spawn, Status, TimerFired,
                          UnloadAsked)
from refimpl.core import errors
from refimpl.core.protocol import LoadingState, ReadyState, SleepingState, format_message

GiB = 1024**3
READY = format_message(ReadyState({"id": "x"}))


def core(*names: str, **config: object) -> RouterCore:
    specs = tuple(ModelSpec(n, stop_timeout=10.0) for n in names)
    return RouterCore(RouterConfig(models=specs, **config))  # type: ignore[arg-type]


def of(kind: type, commands: list[object]) -> list[object]:
    return [c for c in commands if isinstance(c, kind)]


def test_the_core_imports_no_io_clock_or_randomness() -> None:
    banned = {"asyncio", "trio", "anyio", "time", "os", "subprocess", "random", "socket",
              "threading", "datetime"}
    for path in (Path(__file__).resolve().parent.parent / "refimpl" / "core").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module.split(".")[0]]
            assert not banned.intersection(names), f"{path.name} imports {names}"


def test_the_core_modules_import_no_circle() -> None:
    """The scheduler decides and the core carries out: the core's modules import one another
    in one direction only (the scheduler reads the core through ``Effects``, not by import)."""
    core_dir = Path(__file__).resolve().parent.parent / "refimpl" / "core"
    imports: dict[str, set[str]] = {}
    for path in core_dir.glob("*.py"):
        imports[path.stem] = {node.module for node in ast.walk(ast.parse(path.read_text()))
                              if isinstance(node, ast.ImportFrom) and node.level == 1
                              and node.module}
    assert "router" not in imports["scheduler"], imports["scheduler"]

    def reach(start: str, seen: set[str]) -> set[str]:
        for name in imports.get(start, ()):
            if name not in seen:
                seen.add(name)
                reach(name, seen)
        return seen

    circles = sorted(m for m in imports if m in reach(m, set()))
    assert circles == [], f"import circles through {circles}"


def test_cold_request_loads_then_forwards() -> None:
    c = core("a")
    out = c.handle(RequestArrived(1, "a"), 0.0)
    assert out == [Publish("a", "status_change", {"status": "loading"}), Spawn(1, "a")]
    out = c.handle(ChildOutput(1, format_message(LoadingState())), 0.1)
    assert c.models["a"].status is Status.LOADING and not of(Forward, out)
    out = c.handle(ChildOutput(1, READY), 0.5)
    assert of(Forward, out) == [Forward(1, "a", 1)]
    assert c.models["a"].status is Status.LOADED and c.models["a"].info == {"id": "x"}
    assert c.handle(RequestArrived(2, "a"), 0.6) == [Forward(2, "a", 1)]


def test_routing_by_alias_and_errors_for_missing_or_unknown_names() -> None:
    c = RouterCore(RouterConfig(models=(ModelSpec("a", aliases=("alpha",)),)))
    assert of(Spawn, c.handle(RequestArrived(1, "alpha"), 0.0)) == [Spawn(1, "a")]
    missing = c.handle(RequestArrived(2, None), 0.0)
    assert missing == [Reply(2, 400, errors.INVALID_REQUEST, "the request names no model")]
    unknown = c.handle(RequestArrived(3, "zeta"), 0.0)
    assert [(r.status, r.kind) for r in of(Reply, unknown)] == [(400, errors.MODEL_NOT_FOUND)]


def test_autoload_off_answers_not_loaded_and_per_request_override() -> None:
    c = core("a", autoload=False)
    out = c.handle(RequestArrived(1, "a"), 0.0)
    assert [(r.status, r.kind) for r in of(Reply, out)] == [(400, errors.MODEL_NOT_LOADED)]
    assert of(Spawn, c.handle(RequestArrived(2, "a", autoload=True), 0.0)) == [Spawn(1, "a")]
    c2 = core("a")
    out = c2.handle(RequestArrived(1, "a", autoload=False), 0.0)
    assert of(Reply, out) and not of(Spawn, out)


def test_requests_for_one_model_share_one_load() -> None:
    c = core("a")
    spawns = [s for i in range(5) for s in of(Spawn, c.handle(RequestArrived(i, "a"), 0.0))]
    assert spawns == [Spawn(1, "a")]
    out = c.handle(ChildOutput(1, READY), 1.0)
    assert of(Forward, out) == [Forward(i, "a", 1) for i in range(5)]


def test_busy_model_waits_to_drain_then_the_queued_model_loads() -> None:
    c = core("a", "b", models_max=1)
    c.handle(RequestArrived(1, "a"), 0.0)
    c.handle(ChildOutput(1, READY), 1.0)
    assert c.handle(RequestArrived(2, "b"), 2.0) == []  # a is busy: nothing is evicted
    # a new request for a drains behind b instead of keeping a busy forever
    assert c.handle(RequestArrived(3, "a"), 2.5) == []
    assert c.handle(ResponseEnded(1), 3.0) == [SendExit(1)]
    assert c.next_timer() == 13.0
    out = c.handle(ChildExited(1, 0), 3.2)
    assert out[0] == Publish("a", "status_change",
                             {"status": "unloaded", "exit_code": 0, "failed": False})
    assert of(Spawn, out) == [Spawn(2, "b")]


def test_stop_timeout_force_kills_a_child_that_ignores_exit() -> None:
    c = core("a")
    c.handle(RequestArrived(1, "a"), 0.0)
    c.handle(ChildOutput(1, READY), 1.0)
    c.handle(ResponseEnded(1), 2.0)
    out = c.handle(UnloadAsked(9, "a"), 3.0)
    assert out == [SendExit(1), Reply(9, 200, errors.OK)]
    assert c.next_timer() == 13.0
    assert c.handle(TimerFired(), 12.9) == []
    assert c.handle(TimerFired(), 13.0) == [Kill(1)]
    assert c.next_timer() is None
    out = c.handle(ChildExited(1, -9), 13.1)
    assert out == [Publish("a", "status_change",
                           {"status": "unloaded", "exit_code": -9, "failed": False})]


def test_unloading_a_loading_child_kills_it_at_once_and_answers_its_waiters() -> None:
    c = core("a")
    c.handle(RequestArrived(1, "a"), 0.0)
    assert c.handle(UnloadAsked(9, "a"), 0.2) == [Kill(1), Reply(9, 200, errors.OK)]
    out = c.handle(ChildExited(1, -9), 0.3)
    replies = of(Reply, out)
    assert [(r.req, r.status, r.kind) for r in replies] == [(1, 503, errors.LOAD_FAILED)]


def test_crash_while_loading_fails_with_the_exit_code() -> None:
    c = core("a")
    c.handle(RequestArrived(1, "a"), 0.0)
    out = c.handle(ChildExited(1, 134), 0.5)
    assert out[0] == Publish("a", "status_change",
                             {"status": "unloaded", "exit_code": 134, "failed": True})
    assert c.models["a"].failed and c.models["a"].exit_code == 134
    assert "exit code 134" in of(Reply, out)[0].message  # type: ignore[attr-defined]
    assert of(Spawn, c.handle(RequestArrived(2, "a"), 1.0)) == [Spawn(2, "a")]


def test_sleeping_and_waking() -> None:
    c = core("a")
    c.handle(RequestArrived(1, "a"), 0.0)
    c.handle(ChildOutput(1, READY), 1.0)
    c.handle(ResponseEnded(1), 1.5)
    c.handle(ChildOutput(1, format_message(SleepingState())), 5.0)
    assert c.models["a"].status is Status.SLEEPING
    assert c.handle(RequestArrived(2, "a"), 6.0) == [Forward(2, "a", 1)]  # the child wakes itself
    out = c.handle(ChildOutput(1, format_message(ReadyState({}))), 6.2)
    assert out == [Publish("a", "status_change", {"status": "loaded"})]
    assert c.models["a"].info == {"id": "x"}  # ready {} on wake-up keeps the first info


def test_load_and_unload_api_answers() -> None:
    c = core("a", "b", models_max=1)
    assert of(Reply, c.handle(LoadAsked(1, "zz"), 0.0))[0].status == 404  # type: ignore[attr-defined]
    out = c.handle(LoadAsked(2, "a"), 0.0)
    assert Reply(2, 200, errors.OK) in out and Spawn(1, "a") in out
    assert of(Reply, c.handle(LoadAsked(3, "a"), 0.1))[0].status == 400  # type: ignore[attr-defined]
    assert of(Reply, c.handle(UnloadAsked(4, "b"), 0.1))[0].status == 400  # type: ignore[attr-defined]
    c.handle(ChildOutput(1, READY), 1.0)
    out = c.handle(LoadAsked(5, "b"), 2.0)  # a is idle: evicted for the asked load
    assert Reply(5, 200, errors.OK) in out and SendExit(1) in out


def test_client_gone_while_queued_costs_nobody_their_slot() -> None:
    c = core("a", "b", "c", models_max=1)
    c.handle(RequestArrived(1, "a"), 0.0)
    c.handle(ChildOutput(1, READY), 1.0)
    c.handle(RequestArrived(2, "b"), 1.1)
    c.handle(RequestArrived(3, "c"), 1.2)
    c.handle(ClientGone(2), 1.3)
    c.handle(ResponseEnded(1), 2.0)
    out = c.handle(ChildExited(1, 0), 2.1)
    assert of(Spawn, out) == [Spawn(2, "c")]


def test_memory_budget_evicts_until_the_new_model_fits() -> None:
    specs = (ModelSpec("a", memory={"gpu": 4 * GiB}), ModelSpec("b", memory={"gpu": 4 * GiB}),
             ModelSpec("c", memory={"gpu": 6 * GiB}), ModelSpec("huge", memory={"gpu": 20 * GiB}))
    c = RouterCore(RouterConfig(models=specs, models_max=0, devices={"gpu": 10 * GiB}))
    for i, (name, inst) in enumerate([("a", 1), ("b", 2)]):
        c.handle(RequestArrived(i, name), float(i))
        c.handle(ChildOutput(inst, READY), float(i) + 0.5)
        c.handle(ResponseEnded(i), float(i) + 0.6)
    out = c.handle(RequestArrived(5, "c"), 3.0)
    assert of(SendExit, out) == [SendExit(1)]  # evicting a (LRU) frees 4 GiB: 4 + 6 fits
    assert of(Spawn, c.handle(ChildExited(1, 0), 3.1)) == [Spawn(3, "c")]
    out = c.handle(RequestArrived(6, "huge"), 4.0)
    assert [(r.status, r.kind) for r in of(Reply, out)] == [(507, errors.INSUFFICIENT_MEMORY)]


def test_models_max_zero_is_unlimited_and_load_on_startup() -> None:
    specs = tuple(ModelSpec(n, load_on_startup=(n == "a")) for n in "abcdef")
    c = RouterCore(RouterConfig(models=specs, models_max=0))
    assert of(Spawn, c.handle(RouterStarted(), 0.0)) == [Spawn(1, "a")]
    spawned = [s for i, n in enumerate("bcdef") for s in of(Spawn, c.handle(RequestArrived(i, n), 0))]
    assert len(spawned) == 5 and len(c.instances) == 6


def test_an_illegal_transition_from_a_lying_child_is_ignored() -> None:
    c = core("a")
    c.handle(RequestArrived(1, "a"), 0.0)
    out = c.handle(ChildOutput(1, format_message(SleepingState())), 0.1)  # sleeping while loading
    assert c.models["a"].status is Status.LOADING
    assert [type(x).__name__ for x in out] == ["Log"]


@pytest.mark.parametrize("policy", ["naive-lru", "drain-timeout"])
def test_historical_policies_evict_a_busy_model(policy: str) -> None:
    c = core("a", "b", models_max=1, policy=policy, drain_timeout=5.0)
    c.handle(RequestArrived(1, "a"), 0.0)
    c.handle(ChildOutput(1, READY), 1.0)
    out = c.handle(RequestArrived(2, "b"), 2.0)
    if policy == "drain-timeout":
        assert out == [] and c.next_timer() == 7.0
        out = c.handle(TimerFired(), 7.0)
    assert SendExit(1) in out
