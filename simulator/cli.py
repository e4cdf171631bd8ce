"""``python -m simulator``: run one simulated router, or sweep many seeds and report failing ones."""

from __future__ import annotations

import argparse
import random
import re
import shlex
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from properties.mutants import MUTANTS, mutated
from refimpl.core.config import DEFAULT_POLICY, POLICIES, ModelSpec, RouterConfig
from refimpl.router.options import parse_device
from refimpl.core.trace import format_trace

from .engine import Simulation, SimResult
from .faults import FAULT_PRESETS
from .workloads import WORKLOADS, make_workload

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
# Checking the guarantees needs the whole trace in memory: above this many simulated seconds the
# run only counts, unless --check is given.
CHECK_LIMIT = 3600.0


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h', '24h', '2d' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|d)?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use a number with s, m, h or d, like 90s, 10m, 24h")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise argparse.ArgumentTypeError("the duration must be more than 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0")
    return value


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                   help="scheduling policy (default: %(default)s)")
    p.add_argument("--workload", choices=WORKLOADS, default="zipf",
                   help="arrival pattern (default: %(default)s)")
    p.add_argument("--models", type=positive_int, default=8, metavar="N",
                   help="number of models m0..mN-1 (default: %(default)s)")
    p.add_argument("--models-max", type=positive_int, default=2, metavar="K",
                   help="children allowed at once, 0 = unlimited (default: %(default)s)")
    p.add_argument("--rate", type=positive_float, default=1.0,
                   help="mean requests per second (default: %(default)s)")
    p.add_argument("--service", type=positive_float, default=0.2,
                   help="mean seconds a child takes per request (default: %(default)s)")
    p.add_argument("--duration", type=parse_duration, default=parse_duration("10m"),
                   help="simulated time with arrivals, like 90s, 10m, 24h (default: 10m)")
    p.add_argument("--faults", choices=sorted(FAULT_PRESETS), default="none",
                   help="child misbehaviour preset (default: %(default)s)")
    p.add_argument("--faults-until", type=parse_duration, default=None, metavar="TIME",
                   help="no new fault after this time (default: 80%% of the duration)")
    p.add_argument("--device", type=parse_device, action="append", default=[],
                   metavar="NAME=SIZE", help="a memory device and the bytes models may use on it "
                   "(repeatable); each model's need is drawn from the seed")
    p.add_argument("--stop-timeout", type=positive_float, default=10.0,
                   help="seconds before a child that ignores exit is killed (default: %(default)s)")
    p.add_argument("--drain-timeout", type=positive_float, default=30.0,
                   help="drain-timeout policy: seconds blocked before force eviction")
    p.add_argument("--mutant", action="append", default=[], choices=sorted(MUTANTS),
                   metavar="ZN", help="apply a bug-zoo mutant to the router core for this run "
                   "(repeatable): " + ", ".join(sorted(MUTANTS)))


@dataclass(frozen=True)
class RunSpec:
    args: argparse.Namespace

    def config(self, seed: int) -> RouterConfig:
        a = self.args
        rng = random.Random(f"{seed}:memory")
        devices = dict(a.device)
        specs = []
        for i in range(a.models):
            memory = {d: int(cap * rng.uniform(0.15, 0.5)) for d, cap in devices.items()}
            specs.append(ModelSpec(f"m{i}", memory=memory, stop_timeout=a.stop_timeout))
        return RouterConfig(models=tuple(specs), models_max=a.models_max, devices=devices,
                            policy=a.policy, drain_timeout=a.drain_timeout)

    def simulation(self, seed: int, *, record: bool) -> Simulation:
        a = self.args
        workload = make_workload(a.workload, a.models, a.rate, service=a.service)
        until = a.faults_until if a.faults_until is not None else 0.8 * a.duration
        faults = replace(FAULT_PRESETS[a.faults], until=until)
        return Simulation(self.config(seed), workload, faults, random.Random(seed),
                          duration=a.duration, record=record)

    def replay_command(self, seed: int) -> str:
        a = self.args
        parts = ["python", "-m", "simulator", "run", "--policy", a.policy, "--workload",
                 a.workload, "--models", str(a.models), "--models-max", str(a.models_max),
                 "--rate", repr(a.rate), "--service", repr(a.service), "--duration",
                 f"{a.duration:g}s", "--faults", a.faults, "--stop-timeout", repr(a.stop_timeout),
                 "--drain-timeout", repr(a.drain_timeout)]
        if a.faults_until is not None:
            parts += ["--faults-until", f"{a.faults_until:g}s"]
        for name, size in a.device:
            parts += ["--device", f"{name}={size}"]
        for m in a.mutant:
            parts += ["--mutant", m]
        parts += ["--seed", str(seed)]
        return shlex.join(parts)


def _check(result: SimResult, config: RouterConfig) -> list[str]:
    from properties.invariants import check_all
    assert result.trace is not None
    return [str(v) for v in check_all(result.trace, config)]


def cmd_run(args: argparse.Namespace) -> int:
    spec = RunSpec(args)
    check = args.check if args.check is not None else args.duration <= CHECK_LIMIT
    record = check or args.trace or args.plot is not None
    sim = spec.simulation(args.seed, record=record)
    started = time.perf_counter()
    result = sim.run()
    wall = time.perf_counter() - started
    if args.trace:
        assert result.trace is not None
        sys.stdout.write(format_trace(result.trace))
    print(f"# {spec.replay_command(args.seed)}")
    print(result.summary.report())
    print(f"simulated       {result.end:.1f} s in {wall:.2f} s wall")
    if args.plot is not None:
        from .plot import render_svg
        assert result.trace is not None
        with open(args.plot, "w", encoding="utf-8") as f:
            f.write(render_svg(result.trace, sim.config, title=spec.replay_command(args.seed)))
        print(f"plot            {args.plot}")
    if not check:
        print(f"guarantees      not checked (runs over {CHECK_LIMIT:g} s need --check)")
        return 0
    violations = _check(result, sim.config)
    if not violations:
        print("guarantees      all held")
        return 0
    print(f"guarantees      {len(violations)} violation(s):")
    for line in violations[:20]:
        print(f"  {line}")
    if len(violations) > 20:
        print(f"  ... and {len(violations) - 20} more")
    return 1


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = RunSpec(args)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    failing: list[tuple[int, list[str]]] = []
    progress = _progress(args.first_seed, len(seeds))
    for seed in seeds:
        sim = spec.simulation(seed, record=True)
        violations = _check(sim.run(), sim.config)
        if violations:
            failing.append((seed, violations))
        progress(seed, len(failing))
    print(file=sys.stderr)
    print(f"{len(seeds)} seeds, {len(failing)} failing")
    for seed, violations in failing:
        print(f"seed {seed}: {violations[0]}" + (f" (+{len(violations) - 1} more)"
                                                  if len(violations) > 1 else ""))
        print(f"  replay: {spec.replay_command(seed)}")
    return 1 if failing else 0


def _progress(first: int, total: int) -> Callable[[int, int], None]:
    """A one-line progress bar on stderr: seeds done, failing so far, speed."""
    start = time.perf_counter()

    def show(seed: int, failing: int) -> None:
        done = seed - first + 1
        width = 30
        filled = width * done // total
        rate = done / max(time.perf_counter() - start, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} seeds, "
                         f"{failing} failing, {rate:.1f} seeds/s")
        sys.stderr.flush()

    return show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Deterministic simulation of a llama-server router: simulated children, "
                    "memory devices and clients drive the real router core. One seed replays "
                    "one run exactly.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="simulate one run and print its summary",
                         description="Simulate one run and print its summary; with --check "
                                     "(default for runs up to 1h) also check every guarantee.")
    _add_run_options(run)
    run.add_argument("--seed", type=positive_int, default=0, help="(default: %(default)s)")
    run.add_argument("--trace", action="store_true", help="print the trace, one entry a line")
    run.add_argument("--plot", metavar="FILE.svg", help="write a timeline picture")
    run.add_argument("--check", dest="check", action="store_true", default=None,
                     help="check the guarantees on the trace")
    run.add_argument("--no-check", dest="check", action="store_false",
                     help="only count (needs no trace in memory)")
    run.set_defaults(func=cmd_run)
    sweep = sub.add_parser("sweep", help="run many seeds, check every guarantee, list failures",
                           description="Run many seeds and check every guarantee on each; "
                                       "prints each failing seed with the command that replays "
                                       "it. Exit status 1 if any seed fails.")
    _add_run_options(sweep)
    sweep.add_argument("--seeds", type=positive_int, default=20, help="(default: %(default)s)")
    sweep.add_argument("--first-seed", type=positive_int, default=0)
    sweep.set_defaults(func=cmd_sweep)
    sweep.set_defaults(duration=parse_duration("5m"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with mutated(*args.mutant):
        code: int = args.func(args)
    return code
