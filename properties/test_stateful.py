"""Stateful tests: hypothesis programs against the core hold every guarantee on the default
policy; the historical policies are caught with a short counterexample."""

from __future__ import annotations

import time

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from refimpl.core.config import ModelSpec, RouterConfig

from .machine import router_machine

GiB = 1024**3


def three_models(models_max: int, **extra: object) -> RouterConfig:
    specs = tuple(ModelSpec(n, stop_timeout=5.0) for n in ("A", "B", "C"))
    return RouterConfig(models=specs, models_max=models_max, drain_timeout=10.0,
                        **extra)  # type: ignore[arg-type]


MEMORY = RouterConfig(
    models=(ModelSpec("A", memory={"gpu0": 6 * GiB, "host": 1 * GiB}, stop_timeout=5.0),
            ModelSpec("B", memory={"gpu0": 5 * GiB}, stop_timeout=5.0, aliases=("b-alias",)),
            ModelSpec("C", memory={"gpu0": 3 * GiB, "host": 2 * GiB}, stop_timeout=5.0),
            ModelSpec("Huge", memory={"gpu0": 20 * GiB}, stop_timeout=5.0)),
    models_max=0, devices={"gpu0": 10 * GiB, "host": 2 * GiB})

STEPS = settings(stateful_step_count=25)

TestOneSlot = router_machine(three_models(1)).TestCase
TestOneSlot.settings = STEPS
TestTwoSlots = router_machine(three_models(2)).TestCase
TestTwoSlots.settings = STEPS
TestUnlimited = router_machine(three_models(0)).TestCase
TestUnlimited.settings = STEPS
TestMemoryBudget = router_machine(MEMORY).TestCase
TestMemoryBudget.settings = STEPS


def find_counterexample(config: RouterConfig) -> tuple[str, int, float]:
    """Run the machine until hypothesis finds and shrinks a failure; return the printed program,
    its number of steps and the seconds it took."""
    machine = router_machine(config)
    started = time.perf_counter()
    with pytest.raises(AssertionError) as failure:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=2000, stateful_step_count=10, derandomize=True, database=None,
            deadline=None))
    seconds = time.perf_counter() - started
    notes = "\n".join([str(failure.value), *getattr(failure.value, "__notes__", [])])
    steps = [line for line in notes.splitlines() if line.startswith("state.")
             and not line.startswith("state.teardown") and not line.startswith("state.start")]
    return notes, len(steps), seconds


@pytest.mark.thrash
@pytest.mark.parametrize("policy", ["naive-lru", "drain-timeout"])
def test_historical_policy_thrash_is_caught(policy: str) -> None:
    notes, steps, seconds = find_counterexample(three_models(1, policy=policy))
    print(f"\n{policy}: counterexample of {steps} steps found and shrunk in {seconds:.1f} s\n"
          f"{notes}")
    assert "busy_never_evicted" in notes or "no_thrash" in notes, notes
    assert 1 <= steps <= 10, notes
