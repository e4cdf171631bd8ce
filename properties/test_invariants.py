"""Each guarantee of ``invariants.py`` against a hand-made trace that breaks it, and a router with a
user-visible bug (all 503, an API call never answered, a starving queue) against the property
suites alone: every check can fail, and fails for the reason it names."""

from __future__ import annotations

import random
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from refimpl.core import errors
from refimpl.core.commands import Forward, Listed, ModelView, Publish, Reply, SendExit, Spawn
from refimpl.core.config import Card, ModelSpec, RouterConfig
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
