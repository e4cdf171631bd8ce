"""Laws of the policies of ROUTER.md section 7 (queue limit, pin, idle TTL, per-model
concurrency), each on a scripted scenario against the real core with simulated children, and
the sweeps that hold every guarantee (``invariants.CHECKS``, section 7's included) on random
mixtures of them. Each law names, in its docstring, the code change that breaks it; the four
zoo mutants (``properties/mutants/policies.py``) are each killed by the sweep alone.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refimpl.core import errors
from refimpl.core.commands import Forward, Listed, Publish, Reply, SendExit, Spawn
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.events import CatalogChanged, ListAsked
from refimpl.core.router import RouterCore
from refimpl.core.trace import At
from simulator.engine import Simulation
from simulator.faults import FAULT_PRESETS
from simulator.policies import Policies, apply, seeded
from simulator.scenario import Action, Crash, Hang, Load, Remove, Request, Unload, play
from simulator.workloads import WORKLOADS, make_workload

from .invariants import CHECKS, POLICY_CHECKS, assert_held, check_all
from .mutants import MUTANTS, mutated
from .mutants.policies import POLICY_MUTANTS

GiB = 1024**3
BIG = [HealthCheck.large_base_example, HealthCheck.data_too_large, HealthCheck.too_slow]


def specs(*names: str, **extra: Any) -> tuple[ModelSpec, ...]:
    return tuple(ModelSpec(n, stop_timeout=5.0, **extra) for n in names)


def replies(trace: list[At], status: int | None = None) -> list[Reply]:
    return [at.what for at in trace if isinstance(at.what, Reply)
            and (status is None or at.what.status == status)]


# -- queue limit -------------------------------------------------------------------------------

def test_a_full_queue_answers_429_with_retry_after_and_keeps_its_waiters() -> None:
    """--queue-max 1: one request waits for A's load, the next gets 429 (Retry-After), and the
    waiting one is served. Breaks if ``_room`` is not asked before a request waits."""
    config = RouterConfig(specs("A", "B"), models_max=1, queue_max=1)
    trace = play(config, [(0.0, Request("A")), (0.1, Request("B")), (0.2, Request("A"))])
    refused = replies(trace, 429)
    assert [r.req for r in refused] == [2, 3] and all(r.retry_after == 1 for r in refused)
    assert all(r.kind == errors.QUEUE_FULL for r in refused)
    assert [at.what.req for at in trace if isinstance(at.what, Forward)] == [1]
    assert_held(trace, config)


def test_the_queue_limit_counts_waiting_requests_not_those_in_flight() -> None:
    """Two requests in flight on A and --queue-max 1: a request for B still has room to wait.
    Breaks when requests in flight are counted as waiting (mutant P4)."""
    config = RouterConfig(specs("A", "B"), models_max=1, queue_max=1)
    trace = play(config, [(0.0, Request("A", 10.0)), (2.0, Request("A", 10.0)),
                          (5.0, Request("B"))])
    assert not replies(trace, 429)
    assert {at.what.req for at in trace if isinstance(at.what, Forward)} == {1, 2, 3}
    assert_held(trace, config)


# -- pin ---------------------------------------------------------------------------------------

def test_a_pinned_model_is_never_the_victim() -> None:
    """Two slots, P pinned and least recently used, A idle: a request for B evicts A, not P.
    Breaks when ``Scheduler._victims`` keeps pinned models (mutant P2)."""
    config = RouterConfig(specs("P", pin=True) + specs("A", "B"), models_max=2)
    trace = play(config, [(0.0, Request("P")), (3.0, Request("A")), (10.0, Request("B"))])
    stopped = [at.what.instance for at in trace if isinstance(at.what, SendExit)]
    spawned = {at.what.instance: at.what.model for at in trace if isinstance(at.what, Spawn)}
    assert [spawned[i] for i in stopped] == ["A"]
    assert_held(trace, config)


def test_a_request_that_pins_crowd_out_is_answered_503_at_once_naming_them() -> None:
    """One slot held by pinned P: a request and a load for B are refused at once with 503,
    naming P; once P is unloaded, B loads. Breaks when ``Scheduler.pinned_out`` finds no pin
    in the way (the request waits for ever: every_request_answered)."""
    config = RouterConfig(specs("P", pin=True) + specs("B"), models_max=1)
    trace = play(config, [(0.0, Request("P")), (3.0, Request("B")), (3.5, Load("B")),
                          (4.0, Unload("P")), (6.0, Request("B"))])
    refused = replies(trace, 503)
    assert [(r.req, r.kind) for r in refused] == [(2, errors.PINNED_OUT), (3, errors.PINNED_OUT)]
    assert all("'P'" in r.message for r in refused)
    assert [at.what.model for at in trace if isinstance(at.what, Spawn)] == ["P", "B"]
    assert_held(trace, config)


def test_pins_count_against_memory() -> None:
    """A pinned model's memory is taken: a model that fits only without it is refused."""
    config = RouterConfig(specs("P", pin=True, memory={"gpu": 6 * GiB})
                          + specs("B", memory={"gpu": 6 * GiB}), models_max=0,
                          devices={"gpu": 10 * GiB})
    trace = play(config, [(0.0, Request("P")), (3.0, Request("B"))])
    assert [r.req for r in replies(trace, 503)] == [2]
    assert_held(trace, config)


# -- idle TTL ----------------------------------------------------------------------------------

def test_an_idle_model_is_unloaded_after_its_ttl_not_failed() -> None:
    """--models-ttl 10: A, idle from t=1.5, is asked to exit at 11.5 and reported unloaded, not
    failed. Breaks when ``next_timer`` leaves out ``_expiry`` (ttl_unloads_idle: overdue)."""
    config = RouterConfig(specs("A"), ttl=10.0)
    trace = play(config, [(0.0, Request("A"))], until=60.0)
    expired = [(at.t, at.what.expired) for at in trace if isinstance(at.what, SendExit)]
    assert expired == [(11.5, True)]
    unloaded = [at.what.data for at in trace if isinstance(at.what, Publish)
                and at.what.data.get("status") == "unloaded"]
    assert unloaded == [{"status": "unloaded", "exit_code": 0, "failed": False}]
    assert_held(trace, config)


def test_a_busy_model_outlives_its_ttl() -> None:
    """TTL 2 s and a 30 s stream: A is unloaded 2 s after the stream ends, not during it.
    Breaks when the TTL clock runs from the last request's start (mutant P1)."""
    config = RouterConfig(specs("A", ttl=2.0))
    trace = play(config, [(0.0, Request("A", 30.0))], until=60.0)
    assert [at.t for at in trace if isinstance(at.what, SendExit)] == [33.0]
    assert_held(trace, config)


def test_a_pinned_model_keeps_only_its_own_ttl() -> None:
    """--models-ttl 5: B goes after 5 s idle, pinned P stays; pinned Q with its own ttl goes."""
    config = RouterConfig(specs("P", pin=True) + specs("Q", pin=True, ttl=3.0) + specs("B"),
                          models_max=0, ttl=5.0)
    trace = play(config, [(0.0, Request("P")), (0.0, Request("Q")), (0.0, Request("B"))],
                 until=60.0)
    spawned = {at.what.instance: at.what.model for at in trace if isinstance(at.what, Spawn)}
    assert sorted(spawned[at.what.instance] for at in trace
                  if isinstance(at.what, SendExit)) == ["B", "Q"]
    assert_held(trace, config)


# -- per-model concurrency ---------------------------------------------------------------------

def test_concurrency_caps_requests_in_flight_and_keeps_arrival_order() -> None:
    """concurrency 1: three requests for A go to its child one after another, in arrival
    order. Breaks with ``len(forwarded) > limit`` in ``Model.full`` (mutant P3)."""
    config = RouterConfig(specs("A", concurrency=1))
    trace = play(config, [(0.0, Request("A", 2.0)), (0.1, Request("A", 2.0)),
                          (0.2, Request("A"))])
    assert [(at.t, at.what.req) for at in trace if isinstance(at.what, Forward)] == [
        (1.0, 1), (3.0, 2), (5.0, 3)]
    assert_held(trace, config)


def test_requests_in_line_keep_their_model_from_eviction() -> None:
    """A at its concurrency with a request in line, B requested: A drains (its line first)
    and only then is evicted. Breaks when a response's end does not let the next request in
    line go (``_release`` without ``_next_in_line``: request 2 waits for ever)."""
    config = RouterConfig(specs("A", concurrency=1) + specs("B"), models_max=1)
    trace = play(config, [(0.0, Request("A", 5.0)), (0.1, Request("A", 5.0)),
                          (2.0, Request("B"))])
    order = [at.what.req for at in trace if isinstance(at.what, Forward)]
    assert order == [1, 2, 3], order
    assert_held(trace, config)


def test_a_line_sent_back_to_the_queue_keeps_arrival_order_in_its_entry() -> None:
    """A (concurrency 1) has requests 2 and 3 in line when B is requested (A drains: request 5
    for A queues behind B), then A's child dies (request 2 went to it as 1 broke off): its line
    goes back to the queue into A's entry, which now starts at request 3's place, ahead of B; A
    loads again and serves 3 before 5. Broke (policy-mix streams sweeps, heavy faults, seed 37)
    when the entry's requests joined the new child in the order they joined the entry: 5, then
    3 (``bounded_wait``)."""
    config = RouterConfig(specs("A", concurrency=1) + specs("B"), models_max=1)
    trace = play(config, [(0.0, Request("A", 10.0)), (1.5, Request("A", 5.0)),
                          (1.6, Request("A", 5.0)), (1.7, Request("B")), (1.8, Request("A")),
                          (2.0, Crash("A"))])
    order = [at.what.req for at in trace if isinstance(at.what, Forward)]
    assert order == [1, 2, 3, 5, 4], order
    assert_held(trace, config)


def test_a_request_for_a_running_model_joins_the_requests_queued_for_it() -> None:
    """A (concurrency 1) streams; C is requested and A drains for it, so request 4 for A
    queues behind C; then B goes idle and C takes its slot instead (B ignores its exit, C
    waits for its kill): A no longer drains, but 4 still waits in the queue. Request 5 for A,
    which comes then, joins 4 there and goes after it. Broke (group-mix and policy-mix streams
    sweeps, seed 189) when 5 went in line on A at once, ahead of 4 (``bounded_wait``)."""
    config = RouterConfig(specs("A", concurrency=1) + specs("B") + specs("C"), models_max=2)
    trace = play(config, [(0.0, Request("A", 20.0)), (0.1, Request("B", 5.0)),
                          (2.0, Request("C")), (3.0, Request("A")), (4.0, Hang("B")),
                          (7.0, Request("A"))])
    order = [at.what.req for at in trace if isinstance(at.what, Forward)]
    assert order == [1, 2, 3, 4, 5], order
    assert_held(trace, config)


def test_a_request_in_line_keeps_its_autoload_when_its_child_dies() -> None:
    """A (concurrency 1) streams request 1; 2, 3 (autoload off) and 4 wait in line; A's child
    dies (2 went to it as 1 broke off): 3 gets what a request with autoload off gets for a model
    not running (400), 4 goes back to the queue and a new child serves it. Breaks when the
    request that goes in line is recorded without its autoload or its place (mutmut:
    ``_on_request``'s ``Request(...)``)."""
    config = RouterConfig(specs("A", concurrency=1))
    trace = play(config, [(0.0, Request("A", 10.0)), (1.5, Request("A")),
                          (1.55, Request("A", autoload=False)), (1.6, Request("A")),
                          (2.0, Crash("A"))])
    assert [(r.req, r.status, r.kind) for r in replies(trace)] == [
        (3, 400, errors.MODEL_NOT_LOADED)]
    forwarded = [(at.what.req, at.what.instance) for at in trace if isinstance(at.what, Forward)]
    assert forwarded[-1] == (4, 2), forwarded
    assert_held(trace, config)


def test_requests_that_shared_a_load_keep_their_places_when_their_line_goes_back() -> None:
    """Requests 2 and 3 come while A (concurrency 1) loads for 1, and wait in line once it is
    ready; B is requested (A drains); A's child dies (2 went to it as 1 broke off): 3 goes back
    to the queue at its own place, ahead of B, and A's next child serves it first. Breaks when
    a request that joins a load is recorded without its place (mutmut: ``_on_request``'s
    ``Request(name, Phase.WAITING, ...)``)."""
    config = RouterConfig(specs("A", concurrency=1) + specs("B"), models_max=1)
    trace = play(config, [(0.0, Request("A", 10.0)), (0.1, Request("A")), (0.2, Request("A")),
                          (1.5, Request("B")), (2.0, Crash("A"))])
    assert [at.what.req for at in trace if isinstance(at.what, Forward)] == [1, 2, 3, 4]
    assert_held(trace, config)


def test_a_client_that_leaves_its_place_in_line_leaves_nothing_behind() -> None:
    """A (concurrency 1) streams request 1; 2 waits in line and its client leaves: 2 is
    never forwarded, and 3, which came after it, is next. Breaks when the request in line is
    recorded under another model's name (mutmut: ``_on_request``'s ``Request(...)``)."""
    config = RouterConfig(specs("A", concurrency=1))
    trace = play(config, [(0.0, Request("A", 3.0)), (1.5, Request("A", patience=0.5)),
                          (1.6, Request("A"))])
    assert [at.what.req for at in trace if isinstance(at.what, Forward)] == [1, 3]
    assert_held(trace, config)


# -- what the router shows ---------------------------------------------------------------------

def test_the_listing_shows_each_policy_and_a_reload_publishes_its_change() -> None:
    """GET /models (``Listed``) carries ttl, pinned and concurrency; a catalog change that
    alters them publishes ``policy_change``, one that does not publishes nothing."""
    config = RouterConfig(specs("A", pin=True, concurrency=2) + specs("B"), ttl=30.0)
    core = RouterCore(config)
    listed = core.handle(ListAsked(1), 0.0)[0]
    assert isinstance(listed, Listed)
    views = {v.name: (v.ttl, v.pinned, v.concurrency) for v in listed.models}
    assert views == {"A": (0.0, True, 2), "B": (30.0, False, 0)}
    same = core.handle(CatalogChanged(config.models, req=2), 0.0)
    assert not [c for c in same if isinstance(c, Publish)]
    changed = core.handle(CatalogChanged((replace(config.models[0], pin=False),), req=3), 0.0)
    assert [(c.model, c.event, c.data) for c in changed if isinstance(c, Publish)] == [
        ("A", "policy_change", {"ttl": 30.0, "pinned": False, "concurrency": 2})]


def test_all_off_by_default() -> None:
    """No policy set: the trace is the one the same run gives with every policy explicitly off."""
    base = RouterConfig(specs("A", "B"), models_max=1)
    off = RouterConfig(specs("A", "B", ttl=0.0, pin=False, concurrency=0), models_max=1, ttl=0.0,
                       queue_max=0)
    script: list[tuple[float, Action]] = [(0.0, Request("A", 3.0)), (0.5, Request("B")),
                                          (0.6, Request("A"))]
    assert [repr(at) for at in play(base, script)] == [repr(at) for at in play(off, script)]
    assert not Policies().on and ModelSpec("A").ttl is None and RouterConfig(()).queue_max == 0


# -- sweeps: every guarantee on random mixtures of the policies --------------------------------

def run_mixture(rng: random.Random, seed: int, workload: str, faults: str, models_max: int,
                memory: bool) -> list[str]:
    w = make_workload(workload, 4, rate=rng.choice([0.5, 2.0]), long_service=20.0)
    devices = {"gpu0": 10 * GiB} if memory else {}
    models = tuple(ModelSpec(name, stop_timeout=5.0,
                             memory={"gpu0": (2 + 2 * i) * GiB} if memory else {})
                   for i, name in enumerate(w.model_names()))
    config = apply(RouterConfig(models=models, models_max=models_max, devices=devices,
                                drain_timeout=10.0), seeded(4, seed))
    sim = Simulation(config, w, replace(FAULT_PRESETS[faults], until=60.0), rng,
                     duration=90.0, chunk_rng=random.Random(0))
    result = sim.run()
    assert result.trace is not None
    return [str(v) for v in check_all(result.trace, config)]


def seeded_mixture(seed: int) -> list[str]:
    """The sweep's run for ``seed``: its workload, faults, limits and policies all drawn from
    it (replay one with ``run_mixture`` or this)."""
    rng = random.Random(seed)
    workload, faults = rng.choice(WORKLOADS), rng.choice(sorted(FAULT_PRESETS))
    models_max, memory = rng.randint(0, 3), rng.random() < 0.4
    return run_mixture(rng, seed, workload, faults, models_max, memory)


@settings(max_examples=30, suppress_health_check=BIG)
@given(seed=st.integers(0, 2**32))
def test_every_guarantee_holds_with_the_policies_on(seed: int) -> None:
    violations = seeded_mixture(seed)
    assert not violations, f"seed {seed}:\n" + "\n".join(violations[:10])


@pytest.mark.parametrize("mutant, guarantee", [("P1", "ttl_unloads_idle"),
                                               ("P2", "pinned_never_evicted"),
                                               ("P3", "concurrency_held"),
                                               ("P4", "queue_limit_held")])
def test_each_policy_mutant_in_a_sweep_is_caught(mutant: str, guarantee: str) -> None:
    """Each mutant of properties/mutants/policies.py breaks its policy's guarantee within the
    sweep's first seeds (the same seeds hold every guarantee unmutated)."""
    with mutated(mutant):
        for seed in range(20):
            found = [v for v in seeded_mixture(seed) if v.startswith(f"[{guarantee}]")]
            if found:
                print(f"{mutant}: seed {seed}: {found[0]}")
                return
    pytest.fail(f"{mutant} survived 20 seeds of the policy sweep")


def test_the_policy_guarantees_and_mutants_are_registered() -> None:
    """Section 7's guarantees are judged with every other one (``check_all``), after them; its
    mutants are in the zoo (``python -m properties.zoo P1 P2 P3 P4``)."""
    assert list(CHECKS)[-len(POLICY_CHECKS):] == list(POLICY_CHECKS)
    assert set(POLICY_MUTANTS) == {"P1", "P2", "P3", "P4"}
    assert all(MUTANTS[name] is mutant for name, mutant in POLICY_MUTANTS.items())


def test_a_line_sent_back_to_the_queue_shares_its_oldest_request_place() -> None:
    """A child with a concurrency limit stops with two requests in line, one older and one
    newer than a request for another model: the line goes back to the queue as its model's
    entry, at its oldest request's place, and is served with it; the newer one is work ahead of
    the other model's request, not a starvation of it (``bounded_wait``, seed 64 of the
    policy-mix sweep on streams)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "simulator", "run", "--workload", "streams", "--models", "4",
         "--models-max", "1", "--faults", "light", "--policy-mix", "--seed", "64"],
        capture_output=True, text=True, timeout=120)
    assert "guarantees      all held" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_a_request_in_line_when_its_model_is_removed_gets_404_removed() -> None:
    """A (concurrency 1) serves request 1 with 2 in line when A is removed (``DELETE
    /models``): its child is stopped, and 2 gets what any request for A gets now, 404 "model
    'A' was removed", never a load of a model that is gone. Breaks when ``_out_of_line`` tells a
    removed model's line anything else (mutmut: its ``fail_waiters(...)`` arguments, ``or`` made
    ``and``)."""
    config = RouterConfig(specs("A", concurrency=1))
    trace = play(config, [(0.0, Request("A", 10.0)), (1.5, Request("A")), (2.0, Remove("A"))])
    assert [(r.req, r.status, r.kind, r.message) for r in replies(trace) if r.req == 2] == [
        (2, 404, errors.REMOVED, "model 'A' was removed")]
    assert [at.what.req for at in trace if isinstance(at.what, Forward)] == [1]
    assert sum(isinstance(at.what, Spawn) for at in trace) == 1
    assert_held(trace, config)


def test_the_pin_refusal_says_which_limit_the_pinned_models_hold() -> None:
    """The 503 for a model that pinned models crowd out names them and the limit they fill:
    the count (``--models-max 1``), or memory when the count has room. Breaks when
    ``Scheduler.pinned_message`` names the wrong limit (mutmut: its ``limit`` line)."""
    by_count = RouterConfig(specs("P", pin=True) + specs("B"), models_max=1)
    refused = replies(play(by_count, [(0.0, Request("P")), (3.0, Request("B"))]), 503)
    assert [r.message for r in refused] == [
        "model 'B' cannot be loaded: the pinned models ['P'] hold all the room it needs "
        "(--models-max 1); unload one of them or unpin it"]
    by_memory = RouterConfig(specs("P", pin=True, memory={"host": 6 * GiB})
                             + specs("B", memory={"host": 6 * GiB}), models_max=0,
                             devices={"host": 8 * GiB})
    refused = replies(play(by_memory, [(0.0, Request("P")), (3.0, Request("B"))]), 503)
    assert [r.message for r in refused] == [
        "model 'B' cannot be loaded: the pinned models ['P'] hold all the room it needs "
        "(memory); unload one of them or unpin it"]


def test_a_request_whose_line_went_back_to_the_queue_may_leave_from_there() -> None:
    """A (concurrency 1) streams request 1 with 2 and 3 in line; A's child dies (2 went to it
    as 1 broke off), 3 goes back to the queue and A loads again; 3's client leaves before that
    load is done: 3 is never sent, and 4, which came after it, is. Breaks when the request sent
    back is recorded without its model or phase (mutmut: ``_out_of_line``'s ``Request(...)``):
    its leaving is not seen."""
    config = RouterConfig(specs("A", concurrency=1))
    trace = play(config, [(0.0, Request("A", 10.0)), (1.5, Request("A")),
                          (1.55, Request("A", patience=1.0)), (2.0, Crash("A")),
                          (2.1, Request("A"))])
    assert [at.what.req for at in trace if isinstance(at.what, Forward)] == [1, 2, 4]
    assert_held(trace, config)


def test_a_model_idle_after_its_line_is_served_expires_at_its_ttl() -> None:
    """A (concurrency 1, ttl 5 s): request 2 waits in line and goes to the child when 1 ends;
    A then idles and is unloaded 5 s after 2 ended, as expired: its idle time counts from the
    end of the last request its line sent. (``_next_in_line`` passing no ``now``, mutmut's
    ``_next_in_line__mutmut_6``, passes this law: ``_release`` sets the model's last use right
    after; properties/test_survivor_laws.py kills it with a reload.)"""
    config = RouterConfig(specs("A", concurrency=1, ttl=5.0))
    trace = play(config, [(0.0, Request("A", 2.0)), (0.1, Request("A", 1.0))], until=30.0)
    sent = {at.what.req: at.t for at in trace if isinstance(at.what, Forward)}
    assert sent == {1: 1.0, 2: 3.0}, sent
    expired = [at.t for at in trace if isinstance(at.what, SendExit) and at.what.expired]
    assert expired == [9.0], expired
    assert_held(trace, config)
