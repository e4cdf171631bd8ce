"""Whole-router simulation speed: requests per wall second of the real driver and HTTP app under
trio's MockClock (``simulator/whole.py``), next to the core-only engine (``simulator/engine.py``)
on the same arrivals, in the same run.

    python bench/whole_speed.py              # 2000 requests, 4 models, models_max 2, no faults
    python bench/whole_speed.py --write      # ... and record the result in docs/BENCHMARKS.md

Both simulations get the same arrivals (times and models, one seed). The engine feeds the core
directly; the whole-router simulation sends each one as an HTTP call through Starlette, the
driver, the proxy's httpx client and a simulated child's HTTP server. Both traces are checked
with every invariant, outside the timed part.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import write_section  # noqa: E402
from properties.invariants import check_all  # noqa: E402
from refimpl.core.config import ModelSpec, RouterConfig  # noqa: E402
from simulator.engine import Simulation  # noqa: E402
from simulator.faults import FAULT_PRESETS  # noqa: E402
from simulator.whole import Chat, Program, World, run_program  # noqa: E402
from simulator.workloads import Arrival, make_workload  # noqa: E402

MARK = "<!-- whole_speed -->"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--models-max", type=int, default=2)
    p.add_argument("--rate", type=float, default=5.0, help="requests per virtual second")
    p.add_argument("--workload", default="zipf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help="record the result in docs/BENCHMARKS.md")
    a = p.parse_args()

    w = make_workload(a.workload, a.models, a.rate)
    arrivals: list[Arrival] = []
    for arrival in w.arrivals(random.Random(a.seed), float("inf")):
        arrivals.append(arrival)
        if len(arrivals) == a.requests:
            break
    duration = arrivals[-1].t

    # The core alone: the same arrivals, fed through the engine's event heap.
    config = RouterConfig(models=tuple(ModelSpec(n, stop_timeout=2.0) for n in w.model_names()),
                          models_max=a.models_max)
    sim = Simulation(config, None, FAULT_PRESETS["none"], random.Random(a.seed),
                     duration=duration)
    started = time.perf_counter()
    sim.start()
    for arrival in arrivals:
        sim.run_until(arrival.t)
        sim.request(arrival.model, arrival.service)
    while sim.step():
        pass
    core_wall = time.perf_counter() - started
    assert sim.trace is not None
    core_violations = check_all(sim.trace, config)

    # The whole router: the same arrivals as HTTP calls.
    steps, last = [], 0.0
    for arrival in arrivals:
        steps.append(Chat(arrival.model, after=arrival.t - last))
        last = arrival.t
    program = Program(tuple(steps), World(models=tuple(w.model_names()),
                                          models_max=a.models_max, max_trace=10**9), a.seed)
    started = time.perf_counter()
    run = run_program(program)
    whole_wall = time.perf_counter() - started
    whole_violations = run.violations()
    ok = sum(1 for e in run.exchanges if e.status == 200 and e.complete)

    lines = [
        f"| simulated | {a.requests} requests, {a.workload} over {a.models} models at "
        f"{a.rate:g} req/s ({duration:,.0f} virtual s), models_max {a.models_max}, seed {a.seed} |",
        f"| core-only engine | {core_wall:.2f} s: {a.requests / core_wall:,.0f} requests/s "
        f"({len(core_violations)} violations) |",
        f"| whole router (driver + Starlette app + proxy, trio MockClock) | {whole_wall:.2f} s: "
        f"{a.requests / whole_wall:,.0f} requests/s, {ok} answered 200 "
        f"({len(whole_violations)} violations) |",
        f"| whole / core | {whole_wall / core_wall:.0f}x slower |",
        f"| machine | {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()} |",
    ]
    table = "\n".join(["| figure | value |", "|---|---|", *lines])
    print(table)
    for v in [*map(str, core_violations), *whole_violations][:5]:
        print(f"  {v}")
    if a.write:
        section = ("## Whole-router simulation speed\n\nThe same arrivals through the core-only "
                   "engine and through the whole router (every request an HTTP call through "
                   "Starlette, the driver, the proxy and a simulated child). The hypothesis "
                   "programs of `properties/test_whole_router.py` are short (up to 12 steps): "
                   "about 80 programs per wall second.\n\n"
                   f"Command: `python bench/whole_speed.py --write`\n\n{table}")
        print(f"written to {write_section(MARK, section)}")
    return 1 if core_violations or whole_violations else 0


if __name__ == "__main__":
    sys.exit(main())
