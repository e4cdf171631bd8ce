"""``python -m simulator``: run one simulated router, or sweep many seeds and report failing ones."""

from __future__ import annotations

import argparse
import random
import re
import shlex
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence

from properties.mutants import MUTANTS, mutated
from refimpl.core.config import DEFAULT_POLICY, POLICIES, ModelSpec, RouterConfig
from refimpl.router.options import parse_device
from refimpl.core.trace import At, format_trace

from .distributed import default_workers
from .engine import Simulation, SimResult
from .faults import FAULT_PRESETS
from .policies import Policies, apply, grouped, seeded
from .workloads import WORKLOADS, make_workload

if TYPE_CHECKING:
    from properties.invariants import Violation
    from .plot import Window

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
# Checking the guarantees needs the whole trace in memory: above this many simulated seconds the
# run only counts, unless --check is given.
CHECK_LIMIT = 3600.0


def _seconds(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|d)?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use a number with s, m, h or d, like 90s, 10m, 24h")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h', '24h', '2d' -> seconds."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("the duration must be more than 0")
    return value


def parse_window(text: str) -> Window:
    """'auto', 'all', or 'FROM-TO' in the run's time ('0-90s', '2m-3m') -> (from, to) seconds."""
    if text == "auto" or text == "all":
        return "auto" if text == "auto" else "all"
    start, dash, end = text.partition("-")
    if not dash:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not FROM-TO (like 0-90s or 2m-3m), auto or all")
    window = (_seconds(start), _seconds(end))
    if not window[0] < window[1]:
        raise argparse.ArgumentTypeError(f"{text!r} ends before it starts")
    return window


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def whole_positive(text: str) -> int:
    value = positive_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("it must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0")
    return value


# What each choice means, for --help (tests/test_simulator.py checks every choice has a line).
POLICY_HELP = {
    "fifo": "evicts only idle models, least recently used first; when they are not enough, "
            "the busy ones needed drain (take no new requests) and go once idle. Models are "
            "served first come, first served",
    "naive-lru": "the original router: evicts the least recently used model, busy or not "
                 "(thrashes under --workload ab, failing the requests in flight)",
    "drain-timeout": "evicts idle models; blocked longer than --drain-timeout, it force-evicts "
                     "the least recently used busy one (seed 004's fix)",
}
WORKLOAD_HELP = {
    "ab": "requests alternate between m0 and m1: the thrash trigger (Z1)",
    "uniform": "each request for a model drawn at random",
    "zipf": "model i asked with weight 1/(i+1): a few hot models and a long tail",
    "burst": "bursts of simultaneous requests for several models (Z3, Z7, Z10)",
    "streams": "long streams on one model while others are asked for (Z2, Z19)",
    "disconnects": "uniform, and at least 30% of the clients give up early, often while "
                   "queued",
}
FAULTS_HELP = {
    "none": "children load in 0.3-1.5 s and never misbehave",
    "light": "now and then a child crashes (loading, serving, idle), hangs on exit, writes "
             "garbage, an overlong line or an unknown state",
    "heavy": "all of that often, and children sleep after 5 s idle, downloads fail",
    "sleepy": "children report sleeping after 2 s idle",
}
# The simulator runs the core and the line protocol, not the child, processes or the proxy:
# mutants of those layers change nothing in a simulated run.
SIMULATED_LAYERS = ("core", "protocol")
WRAP = 79  # the epilog's width, as argparse wraps the rest of --help on an 80-column terminal


def _choices(title: str, described: dict[str, str], default: str | None = None) -> str:
    """One block of the epilog: each choice and what it means, wrapped under its name."""
    lines = [f"{title}:"]
    for name, text in described.items():
        text += " (default)" if name == default else ""
        lines += textwrap.wrap(text, width=WRAP, initial_indent=f"  {name:<15}",
                               subsequent_indent=" " * 17)
    return "\n".join(lines)


def run_epilog() -> str:
    mutants = {m.id: m.bug + ("" if m.layer in SIMULATED_LAYERS
                              else f" [{m.layer}: no effect here]")
               for m in MUTANTS.values()}
    return "\n\n".join([
        _choices("policies (--policy)", POLICY_HELP, DEFAULT_POLICY),
        _choices("workloads (--workload)", WORKLOAD_HELP, "zipf"),
        _choices("fault presets (--faults)", FAULTS_HELP, "none"),
        _choices("bug-zoo mutants (--mutant; shared/spec/BUGZOO.md)", mutants),
    ])


def _mutant_ranges() -> list[str]:
    """``["Z1 to Z21", "P1 to P4"]``: the zoo's rows (BUGZOO.md) and the policies' mutants."""
    firsts: dict[str, list[str]] = {}
    for name in MUTANTS:
        firsts.setdefault(name[0], []).append(name)
    return [f"{names[0]} to {names[-1]}" for names in firsts.values()]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                   help="which models may be evicted, and when (default: %(default)s)")
    p.add_argument("--workload", choices=WORKLOADS, default="zipf",
                   help="the clients' arrival pattern (default: %(default)s)")
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
    p.add_argument("--faults", choices=list(FAULT_PRESETS), default="none",
                   help="how often simulated children misbehave (default: %(default)s)")
    p.add_argument("--faults-until", type=parse_duration, default=None, metavar="TIME",
                   help="no new fault after this time (default: 80%% of the duration)")
    p.add_argument("--device", type=parse_device, action="append", default=[],
                   metavar="NAME=SIZE", help="a memory device and the bytes models may use on it "
                   "(repeatable); each model's need is drawn from the seed")
    p.add_argument("--stop-timeout", type=positive_float, default=10.0,
                   help="seconds before a child that ignores exit is killed (default: %(default)s)")
    p.add_argument("--drain-timeout", type=positive_float, default=30.0,
                   help="drain-timeout policy: seconds blocked before force eviction")
    section7 = p.add_argument_group("policies beyond upstream (ROUTER.md section 7; all off by "
                                    "default)")
    section7.add_argument("--models-ttl", type=parse_duration, default=None, metavar="TIME",
                          help="unload a model idle this long (every model but pinned ones)")
    section7.add_argument("--pin", type=positive_int, default=0, metavar="N",
                          help="pin models m0..mN-1: never evicted, still counted")
    section7.add_argument("--concurrency", type=positive_int, default=0, metavar="N",
                          help="at most N requests in flight per model; the others wait in line")
    section7.add_argument("--queue-max", type=positive_int, default=0, metavar="N",
                          help="at most N requests wait; one more is answered 429")
    section7.add_argument("--policy-mix", action="store_true",
                          help="draw each model's TTL, pin and concurrency, the router's TTL "
                               "and queue limit from the seed (a mixture; the options above "
                               "are then ignored)")
    section7.add_argument("--groups", type=positive_int, default=0, metavar="N",
                          help="deal the models round-robin into N groups g0..: a model loads "
                               "only once the models outside its group have exited")
    section7.add_argument("--swap-groups", action="store_true",
                          help="with --groups: at most one member of each group runs at a time")
    section7.add_argument("--persistent-groups", type=positive_int, default=0, metavar="K",
                          help="with --groups: groups g0..gK-1 are persistent (never stopped "
                               "for another group)")
    section7.add_argument("--group-mix", action="store_true",
                          help="draw each model's group, and which groups are swap or "
                               "persistent, from the seed (the group options above are then "
                               "ignored)")
    p.add_argument("--mutant", action="append", default=[], choices=list(MUTANTS),
                   metavar="ZN", help="run with a bug-zoo mutant applied (repeatable): "
                   f"{', '.join(_mutant_ranges())}, each described at the end of `python -m "
                   "simulator run --help`")


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
        config = RouterConfig(models=tuple(specs), models_max=a.models_max, devices=devices,
                              policy=a.policy, drain_timeout=a.drain_timeout)
        return apply(config, self.policies(seed))

    def policies(self, seed: int) -> Policies:
        a = self.args
        groups = grouped(a.models, getattr(a, "groups", 0),
                         swap=getattr(a, "swap_groups", False),
                         persistent=getattr(a, "persistent_groups", 0))
        if getattr(a, "group_mix", False):
            groups = seeded(a.models, seed, groups=True)
        if getattr(a, "policy_mix", False):
            chosen = seeded(a.models, seed)
        else:
            chosen = Policies(ttl=getattr(a, "models_ttl", None) or 0.0,
                              pins=getattr(a, "pin", 0),
                              concurrency=getattr(a, "concurrency", 0),
                              queue_max=getattr(a, "queue_max", 0))
        return replace(chosen, groups=groups.groups, swap=groups.swap,
                       persistent=groups.persistent)

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
        if getattr(a, "policy_mix", False):
            parts += ["--policy-mix"]
        else:
            for flag, value in (("--models-ttl", getattr(a, "models_ttl", None)),
                                ("--pin", getattr(a, "pin", 0)),
                                ("--concurrency", getattr(a, "concurrency", 0)),
                                ("--queue-max", getattr(a, "queue_max", 0))):
                if value:
                    parts += [flag, f"{value:g}s" if flag == "--models-ttl" else str(value)]
        if getattr(a, "group_mix", False):
            parts += ["--group-mix"]
        elif getattr(a, "groups", 0):
            parts += ["--groups", str(a.groups)] + (
                ["--swap-groups"] if getattr(a, "swap_groups", False) else []) + (
                ["--persistent-groups", str(a.persistent_groups)]
                if getattr(a, "persistent_groups", 0) else [])
        for m in a.mutant:
            parts += ["--mutant", m]
        parts += ["--seed", str(seed)]
        return shlex.join(parts)


def _check(result: SimResult, config: RouterConfig) -> list[str]:
    assert result.trace is not None
    return [str(v) for v in _checker(config)(result.trace, config)]


def _checker(config: RouterConfig) -> Callable[..., list[Violation]]:
    """Every guarantee, section 7's (the policies' and the groups') too."""
    from properties.invariants import check_all
    return check_all


def cmd_run(args: argparse.Namespace) -> int:
    if args.plot_window != "auto" and args.plot is None:
        print("python -m simulator run: error: --plot-window needs --plot FILE.svg",
              file=sys.stderr)
        return 2
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
        assert result.trace is not None
        problem = _plot(args.plot, args.plot_window, result.trace, sim.config,
                        spec.replay_command(args.seed))
        if problem is not None:
            print(f"python -m simulator run: error: {problem}", file=sys.stderr)
            return 2
    if not check:
        print(f"guarantees      not checked (runs over {CHECK_LIMIT:g} s need --check)")
        return 0
    assert result.trace is not None
    violations = _checker(sim.config)(result.trace, sim.config)
    if not violations:
        print("guarantees      all held")
        return 0
    print(violation_report(violations))
    return 1


def _plot(path: str, window: Window, trace: Sequence[At], config: RouterConfig,
          title: str) -> str | None:
    """Write the picture and say what it shows; the problem, if it cannot be drawn or written."""
    from .plot import detail_window, render_svg
    if window == "auto":
        window = detail_window(trace, config) or "all"
    try:
        svg = render_svg(trace, config, title=title, window=window)
    except ValueError as exc:
        return f"--plot-window: {exc}"
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(svg)
    except OSError as exc:
        return f"--plot {path}: cannot write it: {exc.strerror or exc}"
    if isinstance(window, tuple):
        print(f"plot            {path}: {window[0]:g}-{window[1]:g}s in detail, under the "
              "whole run (--plot-window to choose)")
    else:
        print(f"plot            {path}")
    return None


EXAMPLES = 10  # violations printed in full after the counts


def violation_report(violations: Sequence[Violation]) -> str:
    """How many times each guarantee broke (most first) with its promise, then examples: the
    first violation of each guarantee, then the next ones, up to ``EXAMPLES``, in trace order."""
    from properties.broken import promise
    counts = Counter(v.guarantee for v in violations)
    lines = [f"guarantees      {_plural(len(violations), 'violation')} of "
             f"{_plural(len(counts), 'guarantee')}:"]
    for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {name}: {n}")
        lines += textwrap.wrap(promise(name), width=WRAP, initial_indent="    ",
                               subsequent_indent="    ")
    first: dict[str, int] = {}
    for i, v in enumerate(violations):
        first.setdefault(v.guarantee, i)
    chosen = set(first.values())
    for i in range(len(violations)):
        if len(chosen) >= max(EXAMPLES, len(first)):
            break
        chosen.add(i)
    examples = sorted(chosen, key=lambda i: (violations[i].t, i))
    lines.append("first examples:" if len(examples) < len(violations) else "all of them:")
    lines += [f"  {violations[i]}" for i in examples]
    if len(violations) > len(examples):
        lines.append(f"  ... and {len(violations) - len(examples)} more")
    return "\n".join(lines)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep
    return sweep(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Deterministic simulation of a llama-server router: simulated children, "
                    "memory devices and clients drive the real router core. One seed replays "
                    "one run exactly.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="simulate one run and print its summary",
                         description=textwrap.fill(
                             "Simulate one run and print its summary; with --check (default "
                             "for runs up to 1h) also check every guarantee, and print how "
                             "many times each one broke, then the first examples.", WRAP),
                         epilog=run_epilog(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_options(run)
    run.add_argument("--seed", type=positive_int, default=0, help="(default: %(default)s)")
    run.add_argument("--trace", action="store_true", help="print the trace, one entry a line")
    run.add_argument("--plot", metavar="FILE.svg", help="write a timeline picture")
    run.add_argument("--plot-window", type=parse_window, default="auto", metavar="FROM-TO",
                     help="the stretch of the run the picture draws in detail, like 0-90s or "
                          "2m-3m, under a strip of the whole run; all: the whole run in detail "
                          "(default: auto, the whole run when its loads fit, else the first "
                          "stretch where they do)")
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
    sweep.add_argument("--scheduler", metavar="tcp://HOST:8786", default=None,
                       help="run the batches on the dask cluster of this scheduler (started "
                            "with `dask scheduler` and `dask worker`; see docs/SCALE.md)")
    sweep.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="without --scheduler: worker processes of a dask LocalCluster on "
                            "this machine; 0 = run in this process (default: one per core, "
                            f"{default_workers()} here, unless the first batch shows that the "
                            "sweep ends sooner in this process than workers take to start)")
    sweep.add_argument("--batch", type=whole_positive, default=25, metavar="N",
                       help="seeds per unit of work sent to a worker (default: %(default)s)")
    sweep.set_defaults(func=cmd_sweep)
    sweep.set_defaults(duration=parse_duration("5m"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with mutated(*args.mutant):
        code: int = args.func(args)
    return code
