"""``check_all`` drops what no guarantee reads (a child's output the router did not act on, log
lines) before it checks a trace. These tests show the drop changes no verdict: on simulated runs
of every policy, the historical ones that break guarantees included, and on the breaking trace of
each guarantee, every check says the same with and without the chatter."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from refimpl.core.commands import Log
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.events import ChildOutput
from simulator.engine import Simulation
from simulator.faults import FAULT_PRESETS
from simulator.workloads import make_workload

from .broken import BROKEN
from .invariants import CHECKS, Trace, without_chatter


def verdicts(trace: Trace, config: RouterConfig) -> dict[str, list[str]]:
    return {name: [str(v) for v in check(trace, config)] for name, check in CHECKS.items()}


@pytest.mark.parametrize("policy", ["fifo", "naive-lru", "drain-timeout"])
@pytest.mark.parametrize("faults", sorted(FAULT_PRESETS))
def test_same_verdicts_on_simulated_runs(policy: str, faults: str) -> None:
    w = make_workload("ab", 3, rate=2.0, long_service=20.0)
    config = RouterConfig(models=tuple(ModelSpec(n, stop_timeout=5.0) for n in w.model_names()),
                          models_max=1, policy=policy, drain_timeout=10.0)
    sim = Simulation(config, w, replace(FAULT_PRESETS[faults], until=60.0), random.Random(7),
                     duration=90.0, chunk_rng=random.Random(0))
    trace = sim.run().trace
    assert trace is not None
    quiet = without_chatter(trace)
    kept = set(map(id, quiet))
    dropped = [at for at in trace if id(at) not in kept]
    assert dropped, "a run with children has output nobody acts on"
    assert {type(at.what) for at in dropped} <= {ChildOutput, Log}
    assert quiet[-1] is trace[-1]
    assert verdicts(quiet, config) == verdicts(trace, config)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_same_verdicts_on_breaking_traces(name: str) -> None:
    config, trace = BROKEN[name]
    quiet = without_chatter(trace)
    assert verdicts(quiet, config) == verdicts(trace, config)
    assert verdicts(quiet, config)[name], f"the breaking trace of {name} no longer breaks it"
