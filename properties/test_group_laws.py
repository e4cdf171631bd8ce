"""Laws of ROUTER.md section 7's groups, each on a scripted scenario against the real core with
simulated children; the sweep and the state machines that hold every guarantee
(``invariants.CHECKS``, which holds section 7's ``POLICY_CHECKS`` and ``GROUP_CHECKS`` too)
on random group memberships mixed with the other policies. Each law names, in its docstring,
the code change that breaks it; the zoo mutant G1 (``properties/mutants/groups.py``) is killed
by the sweep alone and by the state machine alone.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from refimpl.core import errors
from refimpl.core.commands import Forward, Listed, Publish, Reply, SendExit, Spawn
from refimpl.core.config import Group, ModelSpec, RouterConfig
from refimpl.core.events import CatalogChanged, ListAsked
from refimpl.core.router import RouterCore
from refimpl.core.trace import At
from simulator.engine import Simulation
from simulator.faults import FAULT_PRESETS
from simulator.policies import apply, seeded
from simulator.scenario import Action, Load, Request, play
from simulator.workloads import WORKLOADS, make_workload

from .invariants import CHECKS, GROUP_CHECKS, POLICY_CHECKS, assert_held, check_all
from .mutants.groups import GROUP_MUTANTS, group_mutated
from .mutants.registry import MUTANTS
from .policy_machine import policy_machine

GiB = 1024**3
BIG = [HealthCheck.large_base_example, HealthCheck.data_too_large, HealthCheck.too_slow]
CHAT, SWAP, KEPT = Group("chat"), Group("swap", swap=True), Group("kept", persistent=True)


def spec(name: str, group: Group | None = None, **extra: Any) -> ModelSpec:
    return ModelSpec(name, stop_timeout=5.0, group=group, **extra)


def spawned(trace: list[At]) -> list[str]:
    return [at.what.model for at in trace if isinstance(at.what, Spawn)]


def stops(trace: list[At]) -> list[tuple[float, str, str | None]]:
    """(time, model, the model it made way for) of each exit asked."""
    names = {at.what.instance: at.what.model for at in trace if isinstance(at.what, Spawn)}
    return [(at.t, names[at.what.instance], at.what.group) for at in trace
            if isinstance(at.what, SendExit)]


# -- laws --------------------------------------------------------------------------------------

def test_a_model_in_the_way_of_a_queued_model_takes_no_later_request_before_it() -> None:
    """w and y (group chat) stream in both slots; h (chat too) is requested and waits for a
    slot (w drains); then e (its own group: w, y and h are in its way), then y again. y must
    not take that request ahead of e, though e is not the head of the queue yet: it queues
    behind e, as behind a model the queue drains for count or memory. Broke (policy-mix and
    group-mix streams sweeps, seed 2) when only the head's way drained: y took requests that
    came after e's and e waited for them (``bounded_wait``)."""
    config = RouterConfig((spec("w", CHAT), spec("y", CHAT), spec("h", CHAT), spec("e")),
                          models_max=2)
    trace = play(config, [(0.0, Request("w", 20.0)), (0.1, Request("y", 20.0)),
                          (2.0, Request("h")), (3.0, Request("e")), (4.0, Request("y"))])
    order = [at.what.req for at in trace if isinstance(at.what, Forward)]
    assert order == [1, 2, 3, 4, 5], order
    assert_held(trace, config)


def test_members_of_one_group_run_together_and_an_outsider_waits_for_them_to_exit() -> None:
    """a1 and a2 (group chat) run together; b (its own group) is requested while a1 streams:
    idle a2 is asked to exit at once, a1 drains (never evicted busy), and b starts only once
    both have exited. Breaks when the scheduler does not wait for the outsiders' exits (mutant
    G1: groups_held) or spawns b without stopping them."""
    config = RouterConfig((spec("a1", CHAT), spec("a2", CHAT), spec("b")), models_max=4)
    trace = play(config, [(0.0, Request("a1", 5.0)), (0.1, Request("a2", 1.0)),
                          (2.0, Request("b"))])
    assert spawned(trace) == ["a1", "a2", "b"]
    assert stops(trace) == [(2.1, "a2", "b"), (6.0, "a1", "b")]
    b_start = next(at.t for at in trace if isinstance(at.what, Spawn) and at.what.model == "b")
    assert b_start > 6.0  # after a1's exit, not at its stop
    assert_held(trace, config)


def test_a_model_without_a_group_is_its_own_once_groups_are_in_use() -> None:
    """Groups in use (a1 has one): b and c, with none, are each their own group, so c's load
    stops b though --models-max has room. Breaks when a model without a group is taken as in
    every group (``Scheduler.in_the_way`` returning False for ``theirs is None``)."""
    config = RouterConfig((spec("a1", CHAT), spec("b"), spec("c")), models_max=4)
    trace = play(config, [(0.0, Request("b")), (3.0, Request("c"))])
    assert stops(trace) == [(3.0, "b", "c")]
    assert_held(trace, config)


def test_no_group_anywhere_changes_nothing() -> None:
    """With no group configured the trace is the one it was before groups existed: b and c
    run together. Breaks when groups are taken as in use with none configured
    (``Scheduler.groups_on`` always True)."""
    config = RouterConfig((spec("b"), spec("c")), models_max=4)
    script: list[tuple[float, Action]] = [(0.0, Request("b")), (3.0, Request("c"))]
    trace = play(config, script)
    assert stops(trace) == [] and spawned(trace) == ["b", "c"]
    assert [repr(at) for at in trace] == [repr(at) for at in play(
        RouterConfig((ModelSpec("b", stop_timeout=5.0), ModelSpec("c", stop_timeout=5.0)),
                     models_max=4), script)]
    assert not config.groups
    assert_held(trace, config)


def test_a_swap_group_runs_one_member_at_a_time() -> None:
    """s1 and s2 in a swap group: s2's request stops s1 first. Breaks when a swap group's other
    members are not in the way (``in_the_way`` returning False within one group)."""
    config = RouterConfig((spec("s1", SWAP), spec("s2", SWAP)), models_max=4)
    trace = play(config, [(0.0, Request("s1")), (3.0, Request("s2"))])
    assert stops(trace) == [(3.0, "s1", "s2")]
    assert_held(trace, config)


def test_a_persistent_group_is_not_stopped_for_another_but_count_still_ends_it() -> None:
    """k (persistent) stays when a (group chat) loads; with one slot, count still evicts it.
    Breaks when persistence is ignored (``in_the_way`` without ``not theirs.persistent``)."""
    config = RouterConfig((spec("k", KEPT), spec("a", CHAT)), models_max=4)
    trace = play(config, [(0.0, Request("k")), (3.0, Request("a"))])
    assert stops(trace) == [] and spawned(trace) == ["k", "a"]
    assert_held(trace, config)
    one = replace(config, models_max=1)
    trace = play(one, [(0.0, Request("k")), (3.0, Request("a"))])
    assert stops(trace) == [(3.0, "k", None)]  # an eviction for count, not for a group
    assert_held(trace, one)


def test_a_pinned_model_in_the_way_refuses_at_once() -> None:
    """Pinned p (its own group) runs: a request and a load for b are refused 503 at once,
    naming p (a pinned model is never stopped for a group). Breaks when ``pinned_out`` does
    not look at groups (b's request waits for ever: every_request_answered)."""
    config = RouterConfig((spec("p", CHAT, pin=True), spec("b")), models_max=4)
    trace = play(config, [(0.0, Request("p")), (3.0, Request("b")), (3.5, Load("b"))])
    refused = [at.what for at in trace if isinstance(at.what, Reply) and at.what.status == 503]
    assert [(r.req, r.kind) for r in refused] == [(2, errors.PINNED_OUT), (3, errors.PINNED_OUT)]
    assert all("'p'" in r.message and "group" in r.message for r in refused)
    assert spawned(trace) == ["p"]
    assert_held(trace, config)


def test_requests_for_a_draining_outsider_queue_behind_the_load_it_blocks() -> None:
    """a streams, b waits for it to drain; a request for a that comes meanwhile does not keep
    it busy for ever: it queues behind b. Breaks when the models in the way are not marked
    draining (``run`` without ``self.draining |= self.making_way``: b waits while a's traffic
    goes on; bounded_wait)."""
    config = RouterConfig((spec("a", CHAT), spec("b")), models_max=4)
    trace = play(config, [(0.0, Request("a", 5.0)), (2.0, Request("b")),
                          (3.0, Request("a", 5.0))])
    order = [(at.what.req, at.what.model) for at in trace if isinstance(at.what, Forward)]
    assert order == [(1, "a"), (2, "b"), (3, "a")]
    assert_held(trace, config)


def test_the_listing_shows_the_group_and_a_reload_publishes_its_change() -> None:
    """``Listed`` carries each model's group name (None without); a catalog change that alters
    a group publishes ``group_change``, one that does not publishes nothing."""
    config = RouterConfig((spec("a", CHAT), spec("b")))
    core = RouterCore(config)
    listed = core.handle(ListAsked(1), 0.0)[0]
    assert isinstance(listed, Listed)
    assert {v.name: v.group for v in listed.models} == {"a": "chat", "b": None}
    assert not [c for c in core.handle(CatalogChanged(config.models, req=2), 0.0)
                if isinstance(c, Publish)]
    changed = core.handle(CatalogChanged((replace(config.models[1], group=SWAP),), req=3), 0.0)
    assert [(c.model, c.event, c.data) for c in changed if isinstance(c, Publish)] == [
        ("b", "group_change", {"group": "swap", "swap": True, "persistent": False})]


def test_one_group_name_has_one_setting() -> None:
    with pytest.raises(ValueError, match="set two ways"):
        RouterConfig((spec("a", CHAT), spec("b", Group("chat", swap=True))))


# -- sweeps and machines: every guarantee on random groups mixed with the other policies --------

def seeded_groups(seed: int) -> list[str]:
    """One sweep run for ``seed``: its workload, faults, limits, policies and groups all drawn
    from it."""
    rng = random.Random(seed)
    workload, faults = rng.choice(WORKLOADS), rng.choice(sorted(FAULT_PRESETS))
    models_max, memory = rng.randint(0, 3), rng.random() < 0.4
    w = make_workload(workload, 4, rate=rng.choice([0.5, 2.0]), long_service=20.0)
    devices = {"gpu0": 10 * GiB} if memory else {}
    models = tuple(ModelSpec(name, stop_timeout=5.0,
                             memory={"gpu0": (2 + 2 * i) * GiB} if memory else {})
                   for i, name in enumerate(w.model_names()))
    config = apply(RouterConfig(models=models, models_max=models_max, devices=devices,
                                drain_timeout=10.0), seeded(4, seed, groups=True))
    sim = Simulation(config, w, replace(FAULT_PRESETS[faults], until=60.0), rng,
                     duration=90.0, chunk_rng=random.Random(0))
    result = sim.run()
    assert result.trace is not None
    return [str(v) for v in check_all(result.trace, config)]


@settings(max_examples=20, suppress_health_check=BIG)
@given(seed=st.integers(0, 2**32))
def test_every_guarantee_holds_with_groups_on(seed: int) -> None:
    violations = seeded_groups(seed)
    assert not violations, f"seed {seed}:\n" + "\n".join(violations[:10])


def test_the_group_mutant_in_a_sweep_is_caught() -> None:
    """G1 breaks groups_held within the sweep's first seeds (the same seeds hold every
    guarantee unmutated)."""
    with group_mutated("G1"):
        for seed in range(20):
            found = [v for v in seeded_groups(seed) if v.startswith("[groups_held]")]
            if found:
                print(f"G1: seed {seed}: {found[0]}")
                return
    pytest.fail("G1 survived 20 seeds of the group sweep")


def three_models(models_max: int) -> RouterConfig:
    return RouterConfig(tuple(ModelSpec(n, stop_timeout=5.0) for n in ("A", "B", "C")),
                        models_max=models_max, drain_timeout=10.0)


STEPS = settings(stateful_step_count=25)
TestGroupsTwoSlots = policy_machine(three_models(2), groups=True).TestCase
TestGroupsTwoSlots.settings = STEPS
TestGroupsUnlimited = policy_machine(three_models(0), groups=True).TestCase
TestGroupsUnlimited.settings = STEPS


def test_the_group_mutant_in_the_state_machine_is_caught() -> None:
    """G1 is found by the group machine alone (every guarantee checked as the program runs)."""
    machine = policy_machine(three_models(0), groups=True)
    chosen = settings(max_examples=300, stateful_step_count=15, derandomize=True, database=None,
                      deadline=None, report_multiple_bugs=False, phases=[Phase.generate])
    with group_mutated("G1"), pytest.raises(AssertionError, match="groups_held"):
        run_state_machine_as_test(machine, settings=chosen)  # type: ignore[no-untyped-call]


def test_the_group_guarantee_and_mutant_are_registered() -> None:
    """groups_held is judged with every guarantee (just before the policies'), under a name of
    its own; G1 is in the zoo."""
    assert not set(GROUP_CHECKS) & set(POLICY_CHECKS)
    assert all(CHECKS[name] is check for name, check in GROUP_CHECKS.items())
    order = list(CHECKS)
    assert order[-len(POLICY_CHECKS) - len(GROUP_CHECKS):-len(POLICY_CHECKS)] == list(GROUP_CHECKS)
    assert set(GROUP_MUTANTS) == {"G1"}
    assert all(MUTANTS[name] is mutant for name, mutant in GROUP_MUTANTS.items())
