"""Simulator speed: a simulated day of traffic, against a bare event-heap baseline in the same run.

    python bench/sim_speed.py            # 24 h, 8 models, models_max 2, 1 req/s, light faults,
                                         # the trace recorded and every invariant checked on it
    python bench/sim_speed.py --write    # ... and record the result in docs/BENCHMARKS.md
    python bench/sim_speed.py --rate 10 --faults none --no-check   # the raw speed, no trace

The baseline generates the same arrivals from the same seed and pushes and pops two heap events
per request (arrival and response) with no router: the least any event-driven simulator of this
workload pays. The ratio simulation / baseline is the figure to compare across machines; the wall
time is what a user waits.
"""

from __future__ import annotations

import argparse
import heapq
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import write_section  # noqa: E402
from properties.invariants import CHECKS, check_all  # noqa: E402
from refimpl.core.config import ModelSpec, RouterConfig  # noqa: E402
from simulator.engine import Simulation  # noqa: E402
from simulator.faults import FAULT_PRESETS  # noqa: E402
from simulator.workloads import make_workload  # noqa: E402

MARK = "<!-- sim_speed -->"


def baseline(workload_name: str, models: int, rate: float, duration: float, seed: int) -> float:
    w = make_workload(workload_name, models, rate)
    started = time.perf_counter()
    heap: list[tuple[float, int]] = []
    seq = 0
    for arrival in w.arrivals(random.Random(seed), duration):
        seq += 1
        heapq.heappush(heap, (arrival.t, seq))
        seq += 1
        heapq.heappush(heap, (arrival.t + arrival.service, seq))
        while heap and heap[0][0] <= arrival.t:
            heapq.heappop(heap)
    while heap:
        heapq.heappop(heap)
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--models-max", type=int, default=2)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--faults", default="light", choices=sorted(FAULT_PRESETS),
                   help="fault preset of the simulated children (default: %(default)s)")
    p.add_argument("--no-check", action="store_true",
                   help="do not record the trace nor check the invariants on it")
    p.add_argument("--workload", default="zipf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help="record the result in docs/BENCHMARKS.md")
    a = p.parse_args()
    duration = a.hours * 3600
    w = make_workload(a.workload, a.models, a.rate)
    config = RouterConfig(models=tuple(ModelSpec(n) for n in w.model_names()),
                          models_max=a.models_max)
    print(f"simulating {a.hours:g} h of {a.workload} traffic at {a.rate:g} req/s over "
          f"{a.models} models, models_max {a.models_max} ...", flush=True)
    sim = Simulation(config, w, FAULT_PRESETS[a.faults], random.Random(a.seed),
                     duration=duration, record=not a.no_check)
    started = time.perf_counter()
    result = sim.run()
    wall = time.perf_counter() - started
    checked = ""
    violations: list[object] = []
    if result.trace is not None:
        print(f"checking {len(CHECKS)} invariants on {len(result.trace):,} trace entries ...",
              flush=True)
        started = time.perf_counter()
        violations = check_all(result.trace, config)
        check_wall = time.perf_counter() - started
        checked = (f"| invariants | {len(CHECKS)} checked on {len(result.trace):,} trace entries "
                   f"in {check_wall:.1f} s: {len(violations)} violations |\n")
        for v in violations[:5]:
            print(f"  {v}")
    print("baseline (same arrivals through a bare heap) ...", flush=True)
    base = baseline(a.workload, a.models, a.rate, duration, a.seed)
    s = result.summary
    lines = [
        f"| simulated | {a.hours:g} h, {a.workload}, {a.models} models, models_max "
        f"{a.models_max}, {a.rate:g} req/s, faults {a.faults}, seed {a.seed} |",
        f"| requests | {s.requests} (ok {s.ok}, lost {s.lost}) |",
        f"| loads / evictions | {s.loads} / {s.evictions} |",
        f"| wall time | {wall:.1f} s ({s.requests / wall:,.0f} requests/s, "
        f"{duration / wall:,.0f}x real time) |",
        f"| baseline (bare heap) | {base:.2f} s |",
        f"| simulation / baseline | {wall / base:.1f} |",
        f"| machine | {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()} |",
    ]
    table = "\n".join(["| figure | value |", "|---|---|", *lines]) + "\n" + checked.rstrip()
    print(table)
    if a.write:
        cmd = "python bench/sim_speed.py --write"
        section = (f"## Simulator speed\n\nCommand: `{cmd}`\n\n{table}")
        print(f"written to {write_section(MARK, section)}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
