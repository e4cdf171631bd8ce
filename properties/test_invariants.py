"""Each guarantee of ``invariants.py`` against a hand-made trace that breaks it, and a router with a
user-visible bug (all 503, an API call never answered, a starving queue) against the property
suites alone: every check can fail, and fails for the reason it names."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from refimpl.core import errors
from refimpl.core.commands import Forward, Listed, ModelView, Publish, Reply, SendExit, Spawn
from refimpl.core.config import Card, Group, ModelSpec, RouterConfig
from refimpl.core.events import (CatalogChanged, ChildExited, ChildStarted, DownloadAsked, ListAsked, LoadAsked,
                                 RequestArrived, ResponseEnded, RouterStarted, TimerFired,
                                 UnloadAsked)
from refimpl.core.router import RouterCore
from refimpl.core.scheduler import Scheduler
from refimpl.core.trace import At

from .broken import BROKEN, ONE, MEM, GiB, loaded, serve_a, evict, unloaded
from .invariants import (CHECKS, check_all, exit_reaches_unloaded, listing_true,
                         never_forward_to_stopping)
from .machine import router_machine
from .test_sweeps import run_workload


def test_every_guarantee_has_a_breaking_trace() -> None:
    assert set(BROKEN) == set(CHECKS)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_the_trace_breaks_its_guarantee(name: str) -> None:
    config, trace = BROKEN[name]
    violations = CHECKS[name](trace, config)
    assert violations, f"{name} held on a trace made to break it"
    print(f"{name}: {violations[0]}")


def test_a_correct_router_breaks_none() -> None:
    """The same kind of hand-made trace, from a router that does it right, holds every one."""
    trace = [At(0, RouterStarted()), *serve_a(), At(3, RequestArrived(2, "B")),
             *evict(1, "A", 3), At(3.1, Publish("B", "status_change", {"status": "loading"})),
             At(3.1, Spawn(2, "B")), At(4, loaded("B")), At(4, Forward(2, "B", 2)),
             At(5, ResponseEnded(2)), At(6, UnloadAsked(3, "B")), At(6, SendExit(2)),
             At(6, Reply(3, 200, errors.OK)), At(6.1, ChildExited(2, 0)),
             At(6.1, unloaded("B"))]
    assert check_all(trace, ONE) == []


def test_memory_counts_the_spec_a_child_was_loaded_with() -> None:
    """A reload that shrinks a running model's need does not make room: its child still holds
    what it was loaded with."""
    small = ModelSpec("A", memory={"gpu": 1 * GiB}, stop_timeout=5.0)
    trace = [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")), At(1, loaded("A")),
             At(1, Forward(1, "A", 1)),
             At(2, CatalogChanged((small, MEM.models[1]), (), 2)), At(2, Reply(2, 200, "ok")),
             At(3, RequestArrived(3, "B")), At(3, Spawn(2, "B"))]
    violations = CHECKS["limits_held"](trace, MEM)
    assert violations and "12884901888 bytes" in str(violations[0])


# -- routers with a bug a user sees, caught by the property suites alone -------------------------

QUICK = settings(max_examples=300, stateful_step_count=12, deadline=None, database=None,
                 derandomize=True, suppress_health_check=list(HealthCheck))


def caught(config: RouterConfig) -> str:
    """Run the state machine on ``config`` until it fails; the failure's text."""
    with pytest.raises(AssertionError) as failure:
        run_state_machine_as_test(router_machine(config), settings=QUICK)
    return "\n".join([str(failure.value), *getattr(failure.value, "__notes__", [])])


def patched(monkeypatch: pytest.MonkeyPatch, cls: type, name: str,
            fn: Callable[..., Any]) -> None:
    monkeypatch.setattr(cls, name, fn)


def test_a_router_that_answers_every_request_503_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(self: RouterCore, event: RequestArrived, now: float, out: list[Any]) -> None:
        out.append(Reply(event.req, 503, errors.LOAD_FAILED, "busy, try later"))

    patched(monkeypatch, RouterCore, "_on_request", busy)
    notes = caught(ONE)
    assert "errors_have_causes" in notes, notes


def test_a_router_that_never_answers_an_api_call_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = RouterCore._on_unload_asked

    def silent(self: RouterCore, event: UnloadAsked, now: float, out: list[Any]) -> None:
        original(self, event, now, out)
        out[:] = [c for c in out if not (isinstance(c, Reply) and c.req == event.req)]

    patched(monkeypatch, RouterCore, "_on_unload_asked", silent)
    notes = caught(ONE)
    assert "API call (unload)" in notes, notes


def test_a_starving_router_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draining switched off: a busy model keeps taking new requests while another waits. The
    sweeps' long-streams workload shows it within a few seeds."""
    monkeypatch.setattr(Scheduler, "_mark_draining", lambda self, model, running: None)
    for seed in range(10):
        violations = run_workload(random.Random(seed), "streams", "none", 1, False)
        if violations:
            break
    assert any("bounded_wait" in v for v in violations), violations


def test_a_crash_must_be_reported_failed() -> None:
    """exit_reaches_unloaded: a child the router did not stop that exits with a non-zero code is
    reported failed; the same exit after the router asked it to go is not."""
    crash = [*serve_a(), At(3, ChildExited(1, 139))]
    assert exit_reaches_unloaded([*crash, At(3, unloaded("A", 139))], ONE)
    assert not exit_reaches_unloaded([*crash, At(3, Publish("A", "status_change", {
        "status": "unloaded", "exit_code": 139, "failed": True}))], ONE)
    stopped = [*serve_a(), At(3, SendExit(1)), At(3.5, ChildExited(1, 139)),
               At(3.5, unloaded("A", 139))]
    assert not exit_reaches_unloaded(stopped, ONE)



def _queue_run(names: str, steps: list[tuple[int, float]]) -> tuple[list[str], list[At]]:
    """Three models, one slot: long requests for ``names`` at t=0, then for each step the
    client of request ``req`` leaves after ``wait`` more seconds; the models forwarded to, in
    order, and the trace."""
    from simulator.engine import Simulation

    from .machine import MACHINE_FAULTS, SETTLE
    config = RouterConfig(models=tuple(ModelSpec(n, stop_timeout=5.0) for n in "ABC"),
                          models_max=1, drain_timeout=10.0)
    s = Simulation(config, None, MACHINE_FAULTS, random.Random(0), duration=0.0, drain=1e9)
    s.start()
    s.run_until(0.0)
    for name in names:
        s.request(name, 30.0)
    for req, wait in steps:
        s.run_until(s.now + wait)
        s.give_up(req)
    s.run_until(s.now + SETTLE)
    assert s.trace is not None
    assert check_all(s.trace, config) == []
    return [at.what.model for at in s.trace if isinstance(at.what, Forward)], s.trace


def test_a_request_whose_entrys_oldest_request_left_waits_from_its_own_place() -> None:
    """Found by the queue state machine: B's first request left while queued; B's second one
    arrived after C's, so FIFO serves C first (30 s) and the second B after it. ``bounded_wait``
    must judge that request from its own place, not from the place of the one that left."""
    forwards, _ = _queue_run("ABCB", [(1, 0.0), (2, 0.0)])
    assert forwards == ["C", "B"], forwards  # the router's order: by arrival of what still waits


def test_a_load_started_for_a_request_that_left_keeps_its_place() -> None:
    """Found by the queue state machine: A's load started for its first request, whose client
    then left; A's second request (which arrived after C's) joined that load and is served
    first. ``bounded_wait`` counts it as work ahead of C's request: the load keeps its place."""
    forwards, _ = _queue_run("BACA", [(1, 0.0), (2, 2.0)])
    assert forwards == ["A", "C"], forwards


DRAIN = RouterConfig(models=tuple(ModelSpec(n, stop_timeout=5.0) for n in "AB"),
                     models_max=1, drain_timeout=10.0)


def _draining() -> Any:
    """Two models, one slot: a 30 s request for B (1), then one for A (2), for which B drains."""
    from simulator.engine import Simulation

    from .machine import MACHINE_FAULTS
    s = Simulation(DRAIN, None, MACHINE_FAULTS, random.Random(0), duration=0.0, drain=1e9)
    s.start()
    s.run_until(0.0)
    s.request("B", 30.0)
    s.request("A", 30.0)
    return s


def _drain_run(then: list[tuple[float, str, bool | None]]) -> tuple[dict[int, Any], list[At]]:
    """B drains for A (``_draining``); then each ``(wait, model, autoload)`` sends a 30 s
    request after ``wait`` more seconds. What each request got (``"forwarded to X"`` or the
    reply's kind), and the trace."""
    from .machine import SETTLE
    s = _draining()
    for wait, name, autoload in then:
        s.run_until(s.now + wait)
        s.request(name, 30.0, autoload=autoload)
    s.run_until(s.now + SETTLE)
    assert s.trace is not None
    assert check_all(s.trace, DRAIN) == []
    got: dict[int, Any] = {}
    for at in s.trace:
        if isinstance(at.what, Forward):
            got.setdefault(at.what.req, f"forwarded to {at.what.model}")
        elif isinstance(at.what, Reply):
            got.setdefault(at.what.req, at.what.kind)
    return got, s.trace


def test_autoload_off_waits_behind_a_drain() -> None:
    """Found by the queue state machine: B drains for A's request; a request for B with
    autoload off used to go straight to B, keeping it busy 30 s more than A's bound. It waits
    behind the drain like any other; B is then stopped for A, and it is refused as for any
    model not running (400 ``model_not_loaded``), after A's request has gone on."""
    got, trace = _drain_run([(15.0, "B", False)])
    assert got == {1: "forwarded to B", 2: "forwarded to A", 3: errors.MODEL_NOT_LOADED}, got
    forwarded_a = next(at.t for at in trace if isinstance(at.what, Forward)
                       and at.what.model == "A")
    refused = next(at.t for at in trace if isinstance(at.what, Reply) and at.what.req == 3)
    assert refused <= forwarded_a, (refused, forwarded_a)  # answered once B stops: not later


def test_autoload_off_is_served_when_the_drain_is_called_off() -> None:
    """The drain ends without a stop (A's client leaves): B keeps running, and the request
    with autoload off that waited behind the drain goes to B."""
    from .machine import SETTLE
    s = _draining()
    s.run_until(15.0)
    held = s.request("B", 30.0, autoload=False)
    s.run_until(20.0)
    assert not any(isinstance(at.what, (Forward, Reply)) and at.what.req == held
                   for at in s.trace or []), "served while B drains"
    s.give_up(2)  # A's client leaves
    s.run_until(s.now + SETTLE)
    assert s.trace is not None
    assert check_all(s.trace, DRAIN) == []
    forwards = {at.what.req: at.what.model for at in s.trace if isinstance(at.what, Forward)}
    assert forwards.get(held) == "B", forwards


def test_a_request_goes_to_the_address_its_child_was_started_at() -> None:
    """never_forward_to_stopping: the proxy sends a request where the child said it serves."""
    started = [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")),
               At(0, ChildStarted(1, "127.0.0.1:4001")), At(1, loaded("A"))]
    right = [*started, At(1, Forward(1, "A", 1, "127.0.0.1:4001")), At(2, ResponseEnded(1))]
    wrong = [*started, At(1, Forward(1, "A", 1, "127.0.0.1:4002")), At(2, ResponseEnded(1))]
    assert never_forward_to_stopping(right, ONE) == []
    assert "serves at 127.0.0.1:4001" in str(never_forward_to_stopping(wrong, ONE))


def test_a_listing_that_misses_a_model_or_its_failure_is_caught() -> None:
    """listing_true: a model a request can name must be listed, and a failed exit shows."""
    crash = [*serve_a(), At(3, ChildExited(1, 139)), At(3, Publish("A", "status_change", {
        "status": "unloaded", "exit_code": 139, "failed": True}))]
    views = (ModelView("A", (), "unloaded", failed=True, exit_code=139),
             ModelView("B", (), "unloaded"), ModelView("C", (), "unloaded"))
    assert listing_true([*crash, At(4, ListAsked(2)), At(4, Listed(2, views))], ONE) == []
    hidden_failure = (ModelView("A", (), "unloaded"), *views[1:])
    assert "failed=False" in str(listing_true(
        [*crash, At(4, ListAsked(2)), At(4, Listed(2, hidden_failure))], ONE))
    assert "does not list ['C']" in str(listing_true(
        [*crash, At(4, ListAsked(2)), At(4, Listed(2, views[:2]))], ONE))


def test_an_unload_is_judged_by_the_child_it_was_about() -> None:
    """Found by the whole-router simulation once it shared the engine's children: a finished
    download's child ignored its exit command; an unload (answered at that child's exit) and
    then a load of the model were asked; at the exit the unload is answered and the load's
    child starts, in the same event. ``api_calls_take_effect`` took that new child for the one
    the unload left running. The unload still fails the check if it stops nothing."""
    from dataclasses import replace

    from simulator.scenario import STEADY, Download, Hang, Load, Unload, play
    model = "tiny/x-GGUF:F16"
    config = RouterConfig(models=(ModelSpec("a", stop_timeout=2.0),), models_max=1)
    trace = play(config, [(0.0, Download(model)), (0.5, Hang(model)), (2.0, Unload(model)),
                          (2.0, Load(model))],
                 faults=replace(STEADY, download_time=(1.0, 1.0)), until=40)
    exit_at = next(at.t for at in trace if isinstance(at.what, ChildExited))
    assert [at.what for at in trace if at.t == exit_at and isinstance(at.what, (Reply, Spawn))
            ] == [Reply(2, 200, errors.OK), Spawn(2, model, card=Card(source="cache"))]
    assert check_all(trace, config) == []
    # an unload that stops nothing: its child (1, started before it) still takes requests
    stays = [*serve_a(), At(3, UnloadAsked(2, "A")), At(3, Reply(2, 200, errors.OK))]
    assert "unload 2 of A answered 200" in str(check_all(stays, ONE))


@pytest.mark.parametrize("progress, ok", [
    ({"stage": "mmproj_model"}, True),
    ({"stages": ["text_model"], "current": "text_model", "value": 0.5}, True),
    ({"stage": 3}, False), ({"stage": "mmproj_model", "value": 0.5}, False), ({}, False)])
def test_a_loading_status_may_carry_a_bare_stage(progress: dict[str, Any], ok: bool) -> None:
    """llama-server's child says ``{"stage": "mmproj_model"}`` as its projector starts, and its
    router publishes it as it came: a well-formed event, as the stage's progress is."""
    from .invariants import events_well_formed
    trace = [*serve_a()[:1], At(0.5, Publish("A", "status_change",
                                              {"status": "loading", "progress": progress}))]
    found = [v for v in events_well_formed(trace, ONE) if "progress" in v.detail]
    assert (found == []) is ok, found


# -- the policies of ROUTER.md 7, read for what they are, and still no cover for a fault ---------

def _verdicts(trace: list[At], config: RouterConfig) -> set[str]:
    return {v.guarantee for v in check_all(trace, config, liveness=False)}


def test_a_ttl_unload_is_no_eviction_but_still_judged() -> None:
    """An expired exit of a model idle for its TTL breaks nothing; the same exit of a busy
    model is still caught (by ``ttl_unloads_idle``), and an unmarked one is still an eviction."""
    from .broken import TTL
    idle = [*serve_a(), At(12, TimerFired()), At(12, SendExit(1, expired=True)),
            At(12.1, ChildExited(1, 0)), At(12.1, unloaded("A"))]
    assert _verdicts(idle, TTL) == set()
    busy = [*serve_a()[:5], At(11, TimerFired()), At(11, SendExit(1, expired=True))]
    assert _verdicts(busy, TTL) == {"ttl_unloads_idle"}
    assert "busy_never_evicted" in _verdicts(
        [*serve_a()[:5], At(11, TimerFired()), At(11, SendExit(1))], TTL)


def test_a_pinned_model_is_no_lru_candidate_but_others_are() -> None:
    """victim_is_lru passes over a pinned model used less recently, not an unpinned one."""
    models = (ModelSpec("A", stop_timeout=5.0, pin=True), *ONE.models[1:])
    trace = BROKEN["victim_is_lru"][1]  # B evicted while A (older) is idle
    assert "victim_is_lru" not in _verdicts(trace, RouterConfig(models=models, models_max=2))
    assert "victim_is_lru" in _verdicts(trace, RouterConfig(models=ONE.models, models_max=2))


def test_policy_refusals_need_their_cause() -> None:
    """429 only with --queue-max requests waiting; 503 pinned_models_full only when pins hold
    the room."""
    full = RouterConfig(models=ONE.models, models_max=1, queue_max=1)
    queued = [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")), At(0.5, RequestArrived(2, "B")),
              At(0.5, Reply(2, 429, errors.QUEUE_FULL, "full", retry_after=1))]
    assert "errors_have_causes" not in _verdicts(queued, full)
    assert "errors_have_causes" in _verdicts(queued, RouterConfig(models=ONE.models,
                                                                  models_max=1, queue_max=2))
    from .broken import PIN
    crowded = [*BROKEN["pinned_never_evicted"][1][:6],
               At(3, Reply(2, 503, errors.PINNED_OUT, "the pinned models ['P'] hold it"))]
    assert not _verdicts(crowded, PIN) & {"errors_have_causes", "pinned_never_evicted"}
    unpinned = RouterConfig(models=(ModelSpec("P", stop_timeout=5.0), PIN.models[1]),
                            models_max=1)
    assert {"errors_have_causes", "pinned_never_evicted"} <= _verdicts(crowded, unpinned)


@pytest.mark.parametrize("data, ok", [
    ({"ttl": 30.0, "pinned": False, "concurrency": 2}, True),
    ({"ttl": 0, "pinned": True, "concurrency": 0}, True),
    ({"ttl": -1, "pinned": False, "concurrency": 0}, False),
    ({"ttl": 3, "pinned": "yes", "concurrency": 0}, False),
    ({"ttl": 3, "pinned": False}, False)])
def test_a_policy_change_event_is_well_formed(data: dict[str, Any], ok: bool) -> None:
    trace = [*serve_a(), At(3, Publish("A", "policy_change", data))]
    assert ("events_well_formed" not in _verdicts(trace, ONE)) is ok


# -- the groups of ROUTER.md 7, read for what they are, and still no cover for a fault -----------

CHAT, X, KEPT = Group("chat"), Group("x"), Group("kept", persistent=True)


def _serve(model: str, t: float, req: int, inst: int, *, end: bool = True) -> list[At]:
    """A request for ``model`` loads it and is served (its response ends unless not ``end``)."""
    return [At(t, RequestArrived(req, model)), At(t, loading(model)), At(t, Spawn(inst, model)),
            At(t + 1, loaded(model)), At(t + 1, Forward(req, model, inst)),
            *([At(t + 2, ResponseEnded(req))] if end else [])]


def loading(model: str) -> Publish:
    return Publish(model, "status_change", {"status": "loading"})


def _groups(*specs: ModelSpec, models_max: int = 0) -> RouterConfig:
    return RouterConfig(models=specs, models_max=models_max)


def _make_way(victim: str, inst: int, t: float, *, group: str | None) -> list[At]:
    return [At(t, SendExit(inst, group=group)), At(t + 0.1, ChildExited(inst, 0)),
            At(t + 0.1, unloaded(victim))]


def test_a_group_stop_is_no_eviction_but_still_judged() -> None:
    """Idle A (group chat) asked to exit to make way for B (its own group), while C (persistent
    group) is idle and used less recently, and nothing counts or weighs: no eviction, so
    neither evictions_needed nor victim_is_lru judges it, and it breaks nothing. The same exit
    unmarked is still an eviction nobody needed, of the wrong victim; marked, it is still caught
    stopping a busy model (busy_never_evicted), a pinned one (pinned_never_evicted), or one not
    in B's way (groups_held)."""
    specs = (ModelSpec("A", group=CHAT, stop_timeout=5.0), ModelSpec("B", stop_timeout=5.0),
             ModelSpec("C", group=KEPT, stop_timeout=5.0))
    config = _groups(*specs)
    before = [*_serve("C", 0, 1, 1), *_serve("A", 3, 2, 2), At(6, RequestArrived(3, "B"))]
    after = [At(6.1, loading("B")), At(6.1, Spawn(3, "B")), At(7, loaded("B")),
             At(7, Forward(3, "B", 3)), At(8, ResponseEnded(3))]
    grouped = [*before, *_make_way("A", 2, 6, group="B"), *after]
    assert _verdicts(grouped, config) == set()
    unmarked = [*before, *_make_way("A", 2, 6, group=None), *after]
    assert {"evictions_needed", "victim_is_lru"} <= _verdicts(unmarked, config)
    busy = [*_serve("A", 0, 1, 1, end=False), At(3, RequestArrived(2, "B")),
            At(3, SendExit(1, group="B"))]
    assert "busy_never_evicted" in _verdicts(busy, config)
    pinned = _groups(replace(specs[0], pin=True), *specs[1:])
    assert "pinned_never_evicted" in _verdicts(grouped, pinned)
    together = _groups(specs[0], replace(specs[1], group=CHAT), specs[2])
    assert "groups_held" in _verdicts(grouped, together)


def test_a_pinned_model_in_the_way_refuses_the_load_and_only_then() -> None:
    """P (pinned, its own group) runs; B (group chat) is refused 503 pinned_models_full naming
    P, on arrival and on POST /models/load, though count and memory leave room: P is in B's
    way and never stopped for a group. The same refusal is still caught when P is in a
    persistent group (not in the way: no cause, room left), and one not naming P."""
    specs = (ModelSpec("P", pin=True, stop_timeout=5.0),
             ModelSpec("B", group=CHAT, stop_timeout=5.0))
    message = "the pinned models ['P'] run outside its group"
    refused = [*_serve("P", 0, 1, 1), At(3, RequestArrived(2, "B")),
               At(3, Reply(2, 503, errors.PINNED_OUT, message)), At(4, LoadAsked(3, "B")),
               At(4, Reply(3, 503, errors.PINNED_OUT, message))]
    assert _verdicts(refused, _groups(*specs)) == set()
    kept = _groups(replace(specs[0], group=KEPT), specs[1])
    assert {"errors_have_causes", "pinned_never_evicted"} <= _verdicts(refused, kept)
    unnamed = [*refused[:-1], At(4, Reply(3, 503, errors.PINNED_OUT, "pinned models in the way"))]
    assert "pinned_never_evicted" in _verdicts(unnamed, _groups(*specs))


def test_a_load_a_pinned_model_in_the_way_crowds_out_is_not_owed() -> None:
    """Loads of P (pinned, group x) and B (its own group) both answered 200; P starts, and is
    in B's way: the router drops B's load. C (group x) then loads before B without breaking
    arrival order, and B's load is not owed. With P unpinned it would have been stopped for
    B: the same trace breaks fifo_between_models and api_calls_take_effect."""
    specs = (ModelSpec("P", pin=True, group=X, stop_timeout=5.0),
             ModelSpec("B", stop_timeout=5.0), ModelSpec("C", group=X, stop_timeout=5.0))
    trace = [At(0, LoadAsked(1, "P")), At(0, Reply(1, 200, errors.OK)),
             At(0, LoadAsked(2, "B")), At(0, Reply(2, 200, errors.OK)), At(0, loading("P")),
             At(0, Spawn(1, "P")),
             At(1, loaded("P")), *_serve("C", 2, 3, 2)]
    found = {v.guarantee for v in check_all(trace, _groups(*specs))}
    assert found == set()
    unpinned = _groups(replace(specs[0], pin=False), *specs[1:])
    assert {"fifo_between_models", "api_calls_take_effect"} <= {
        v.guarantee for v in check_all(trace, unpinned)}


@pytest.mark.parametrize("data, ok", [
    ({"group": "chat", "swap": True, "persistent": False}, True),
    ({"group": None, "swap": False, "persistent": False}, True),
    ({"group": None, "swap": True, "persistent": False}, False),
    ({"group": "", "swap": False, "persistent": False}, False),
    ({"group": "chat", "swap": "yes", "persistent": False}, False),
    ({"group": "chat", "swap": False}, False)])
def test_a_group_change_event_is_well_formed(data: dict[str, Any], ok: bool) -> None:
    trace = [*serve_a(), At(3, Publish("A", "group_change", data))]
    assert ("events_well_formed" not in _verdicts(trace, ONE)) is ok
