"""Stateful tests: hypothesis programs against the core hold every guarantee on the default
policy; the historical policies are caught with a short counterexample."""

from __future__ import annotations

import time

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from refimpl.core.config import ModelSpec, RouterConfig

from .machine import router_machine
from .policy_machine import policy_machine

GiB = 1024**3


def three_models(models_max: int, startup: tuple[str, ...] = (), **extra: object) -> RouterConfig:
    """Models A, B and C; those named in ``startup`` load when the router starts."""
    specs = tuple(ModelSpec(n, stop_timeout=5.0, load_on_startup=n in startup)
                  for n in ("A", "B", "C"))
    return RouterConfig(models=specs, models_max=models_max, drain_timeout=10.0,
                        **extra)  # type: ignore[arg-type]


MEMORY = RouterConfig(
    models=(ModelSpec("A", memory={"gpu0": 6 * GiB, "host": 1 * GiB}, stop_timeout=5.0),
            ModelSpec("B", memory={"gpu0": 5 * GiB}, stop_timeout=5.0, aliases=("b-alias",)),
            ModelSpec("C", memory={"gpu0": 3 * GiB, "host": 2 * GiB}, stop_timeout=5.0,
                      load_on_startup=True),
            ModelSpec("Huge", memory={"gpu0": 20 * GiB}, stop_timeout=5.0)),
    models_max=0, devices={"gpu0": 10 * GiB, "host": 2 * GiB})

# The same models on a machine whose second GPU has no room left: no model names it, so it must
# never keep one from loading; only long requests, so that the budget makes a queue.
FULL_GPU = RouterConfig(models=MEMORY.models, models_max=0,
                        devices={"gpu0": 10 * GiB, "host": 2 * GiB, "gpu1": 0})

STEPS = settings(stateful_step_count=25)

TestOneSlot = router_machine(three_models(1)).TestCase
TestOneSlot.settings = STEPS
TestTwoSlots = router_machine(three_models(2, startup=("A", "B", "C"))).TestCase
TestTwoSlots.settings = STEPS
TestUnlimited = router_machine(three_models(0)).TestCase
TestUnlimited.settings = STEPS
TestMemoryBudget = router_machine(MEMORY).TestCase
TestMemoryBudget.settings = STEPS
TestDownloads = router_machine(three_models(1), focus="downloads").TestCase
TestDownloads.settings = STEPS
TestQueue = router_machine(three_models(1), focus="queue").TestCase
TestQueue.settings = STEPS
TestQueueTwoSlots = router_machine(three_models(2), focus="queue").TestCase
TestQueueTwoSlots.settings = STEPS
TestMemoryQueue = router_machine(FULL_GPU, focus="queue").TestCase
TestMemoryQueue.settings = STEPS


def find_counterexample(config: RouterConfig, max_steps: int = 5
                        ) -> tuple[str, int, float, float]:
    """Run the machine until hypothesis finds a failure, then again to find and shrink it; return
    the printed program, its number of steps, the seconds to the first failure and the seconds
    to the shrunk one."""
    machine = router_machine(config)
    # One failure, shrunk: hypothesis stops generating at the first one (report_multiple_bugs)
    # and skips the explain phase, which on Python < 3.12 traces every line of every shrinking
    # run (sys.settrace) for its "Explanation" of the lines only failing runs reach.
    chosen = dict(max_examples=2000, stateful_step_count=max_steps, derandomize=True,
                  database=None, deadline=None, report_multiple_bugs=False)
    started = time.perf_counter()
    with pytest.raises(AssertionError):
        run_state_machine_as_test(machine, settings=settings(phases=[Phase.generate], **chosen))
    found = time.perf_counter() - started
    started = time.perf_counter()
    with pytest.raises(AssertionError) as failure:
        run_state_machine_as_test(machine, settings=settings(
            phases=[p for p in Phase if p is not Phase.explain], **chosen))
    shrunk = time.perf_counter() - started
    notes = "\n".join([str(failure.value), *getattr(failure.value, "__notes__", [])])
    checks = {name for name in dir(machine)  # the machine's invariants: checks, not steps
              if getattr(getattr(machine, name), "hypothesis_stateful_invariant", None)}
    steps = [line for line in notes.splitlines() if line.startswith("state.")
             and line[len("state."):].split("(")[0] not in {"teardown", "start", *checks}]
    return notes, len(steps), found, shrunk


@pytest.mark.thrash
@pytest.mark.parametrize("policy", ["naive-lru", "drain-timeout"])
def test_historical_policy_thrash_is_caught(policy: str) -> None:
    notes, steps, found, shrunk = find_counterexample(three_models(1, policy=policy), 10)
    print(f"\n{policy}: counterexample found in {found:.1f} s, shrunk to {steps} steps in "
          f"{shrunk:.1f} s\n{notes}")
    assert "busy_never_evicted" in notes or "no_thrash" in notes, notes
    assert 1 <= steps <= 10, notes


# -- the same programs with section 7's policies on (TTLs, pins, concurrency, a queue limit:
# a mixture drawn by each program; properties/policy_machine.py) ----------------------------------

TestPoliciesOneSlot = policy_machine(three_models(1)).TestCase
TestPoliciesOneSlot.settings = STEPS
TestPoliciesTwoSlots = policy_machine(three_models(2)).TestCase
TestPoliciesTwoSlots.settings = STEPS
TestPoliciesMemory = policy_machine(MEMORY).TestCase
TestPoliciesMemory.settings = STEPS
TestPoliciesQueue = policy_machine(three_models(1), focus="queue").TestCase
TestPoliciesQueue.settings = STEPS
TestPoliciesQueueTwoSlots = policy_machine(three_models(2), focus="queue").TestCase
TestPoliciesQueueTwoSlots.settings = STEPS
