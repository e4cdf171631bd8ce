"""Policy comparison: the same workloads under each scheduling policy of the core, simulated.

    python bench/policies.py            # every workload under every configuration, 5 seeds
    python bench/policies.py --write    # ... and write docs/POLICIES_COMPARISON.md and its picture
    python bench/policies.py --workloads ab,zipf --configurations fifo,naive-lru --seeds 1

Each cell (a workload under a configuration) is simulated once per seed; the table gives the
median over the seeds of each figure. A seed fixes the arrivals of a workload (drawn from their
own rng, so every configuration gets the very same requests) and the simulated children's load
times. A configuration is a name, a core policy and a function that adjusts the router's
configuration; one whose fields the core does not have yet is skipped with a note.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import write_section  # noqa: E402
from refimpl.core.config import ModelSpec, RouterConfig  # noqa: E402
from simulator.cli import parse_duration  # noqa: E402
from simulator.engine import Simulation, SimResult  # noqa: E402
from simulator.faults import FAULT_PRESETS  # noqa: E402
from simulator.summary import Summary, percentile  # noqa: E402
from simulator.workloads import Arrival, Workload, make_workload  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "POLICIES_COMPARISON.md"
MARK = "<!-- policies_comparison -->"
GiB = 1 << 30
DEVICE = "gpu"
TTL = 10.0  # seconds idle before a TTL unload (loads take 0.3-1.5 s here: about ten loads)


# -- what is compared ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A workload and the router it runs on: ``memory[i]`` is model ``m<i>``'s need in GiB on
    the one device, which offers ``budget`` GiB."""

    name: str
    workload: Workload
    models_max: int
    memory: tuple[float, ...]
    budget: float
    about: str


CASES = (
    Case("ab", make_workload("ab", 2, 1.0), 1, (8, 8), 16,
         "requests alternate between m0 and m1, 1 req/s, one slot"),
    Case("zipf", make_workload("zipf", 8, 1.0), 2, (8,) * 8, 64,
         "8 models, model i asked with weight 1/(i+1), 1 req/s, two slots"),
    Case("burst", make_workload("burst", 6, 1.0), 2, (8,) * 6, 48,
         "bursts of simultaneous requests over 6 models, 1 req/s on average, two slots"),
    Case("streams", make_workload("streams", 4, 0.5, long_service=30.0), 2, (8,) * 4, 32,
         "4 models, 0.5 req/s, 30% of them streams of 15-45 s, two slots"),
    Case("heavy-light", make_workload("zipf", 6, 1.0), 4, (40, 8, 40, 8, 8, 8), 64,
         "zipf over 6 models; m0 and m2 need 40 GiB, the others 8 GiB, on a 64 GiB budget: "
         "one heavy model and three light ones fit, never both heavy ones; four slots"),
)


class Missing(Exception):
    """The core has no field for this configuration yet."""


def with_field(obj: Any, names: tuple[str, ...], value: object) -> Any:
    """``obj`` with the first of the fields ``names`` that it has set to ``value``."""
    have = {f.name for f in dataclasses.fields(obj)}
    for name in names:
        if name in have:
            return dataclasses.replace(obj, **{name: value})
    raise Missing(f"{type(obj).__name__} has no field {' or '.join(names)}")


def _specs(config: RouterConfig, change: Callable[[int, ModelSpec], ModelSpec]) -> RouterConfig:
    return dataclasses.replace(config, models=tuple(change(i, s)
                                                    for i, s in enumerate(config.models)))


def ttl(config: RouterConfig) -> RouterConfig:
    """Every model unloads after ``TTL`` idle seconds (``--models-ttl``, or preset ``ttl``)."""
    try:
        return with_field(config, ("models_ttl", "ttl"), TTL)  # type: ignore[no-any-return]
    except Missing:
        try:
            return _specs(config, lambda i, s: with_field(s, ("ttl",), TTL))
        except Missing:
            raise Missing("neither RouterConfig.models_ttl / ttl nor ModelSpec.ttl exists") \
                from None


def pin(config: RouterConfig) -> RouterConfig:
    """m0, the most asked-for model of every workload, is pinned."""
    return _specs(config, lambda i, s: with_field(s, ("pin", "pinned"), True) if i == 0 else s)


def groups(config: RouterConfig) -> RouterConfig:
    """Models in pairs: m0 and m1 are group g0, m2 and m3 g1, and so on."""
    from refimpl.core.config import Group
    return _specs(config, lambda i, s: with_field(s, ("group",), Group(f"g{i // 2}")))


@dataclass(frozen=True)
class Configuration:
    name: str
    policy: str
    adjust: Callable[[RouterConfig], RouterConfig] | None
    about: str


CONFIGURATIONS = (
    Configuration("fifo", "fifo", None, "the default: FIFO queue, idle LRU victims, drains"),
    Configuration("naive-lru", "naive-lru", None, "the original router: LRU victim, busy or not"),
    Configuration("drain-timeout", "drain-timeout", None,
                  "idle victims; blocked 30 s, force-evicts the LRU busy one"),
    Configuration("fifo+groups", "fifo", groups, "fifo; models grouped in pairs (m0+m1, ...)"),
    Configuration(f"fifo+ttl{TTL:g}", "fifo", ttl,
                  f"fifo; every model unloads after {TTL:g} s idle (--models-ttl {TTL:g})"),
    Configuration("fifo+pin", "fifo", pin, "fifo; m0, the most asked-for model, pinned"),
)


def router_config(case: Case, configuration: Configuration) -> RouterConfig:
    """The router's configuration for a cell; :class:`Missing` if the core lacks a field."""
    specs = tuple(ModelSpec(name, memory={DEVICE: int(need * GiB)})
                  for name, need in zip(case.workload.model_names(), case.memory))
    config = RouterConfig(models=specs, models_max=case.models_max,
                          devices={DEVICE: int(case.budget * GiB)}, policy=configuration.policy)
    return configuration.adjust(config) if configuration.adjust is not None else config


# -- one run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fixed:
    """Arrivals drawn beforehand, so that the run's rng (load times) does not shift them: every
    configuration of a cell sees the same requests at the same instants."""

    drawn: tuple[Arrival, ...]

    def arrivals(self, rng: random.Random, duration: float) -> Iterator[Arrival]:
        return iter(self.drawn)


def simulate(case: Case, configuration: Configuration, seed: int, duration: float,
             *, record: bool = False) -> tuple[RouterConfig, SimResult]:
    config = router_config(case, configuration)
    drawn = tuple(case.workload.arrivals(random.Random(f"{seed}:arrivals:{case.name}"), duration))
    sim = Simulation(config, cast(Workload, _Fixed(drawn)), FAULT_PRESETS["none"],
                     random.Random(seed), duration=duration, record=record)
    return config, sim.run()


@dataclass(frozen=True)
class Measure:
    """The figures of one run (or the medians of several)."""

    requests: float
    served: float
    errors: float  # answered with an error, broken off by their child, or never answered
    loads: float
    loads_per_served: float
    wait_p50: float  # arrival to forward, over forwarded requests
    wait_p99: float
    starvation: float  # the longest wait for any answer (forward, error, or none by the end)
    memory_time: float  # GiB·s held by children (spawn to exit) on the device, over [0, duration]


def measure(summary: Summary, end: float, duration: float) -> Measure:
    replay = summary.replay
    served = summary.ok
    waits = summary.waits
    longest = max(waits, default=0.0)
    for r in replay.requests.values():
        if r.kind == "request" and r.instance is None:
            answered = r.decided_at if r.decided_at is not None else end
            longest = max(longest, answered - r.arrived)
    held = 0.0
    for child in replay.every_child.values():
        if child.download:
            continue
        start = min(child.spawned, duration)
        stop = min(child.exited_at if child.exited_at is not None else end, duration)
        held += child.memory.get(DEVICE, 0) * max(0.0, stop - start)
    return Measure(
        requests=summary.requests, served=served,
        errors=sum(summary.errors.values()) + summary.lost, loads=summary.loads,
        loads_per_served=summary.loads / served if served else float("nan"),
        wait_p50=percentile(waits, 0.5), wait_p99=percentile(waits, 0.99),
        starvation=longest, memory_time=held / GiB)


def median(measures: Sequence[Measure]) -> Measure:
    return Measure(**{f.name: statistics.median(getattr(m, f.name) for m in measures)
                      for f in dataclasses.fields(Measure)})


# -- the comparison -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    case: Case
    configuration: Configuration
    runs: tuple[Measure, ...]  # one per seed, in seed order

    @property
    def median(self) -> Measure:
        return median(self.runs)


@dataclass
class Comparison:
    seeds: tuple[int, ...]
    duration: float
    cells: list[Cell] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # configuration -> why


def compare(cases: Sequence[Case], configurations: Sequence[Configuration],
            seeds: Sequence[int], duration: float,
            say: Callable[[str], object] = lambda s: None) -> Comparison:
    out = Comparison(tuple(seeds), duration)
    for configuration in configurations:
        try:
            router_config(cases[0], configuration)
        except Missing as exc:
            out.skipped[configuration.name] = str(exc)
            say(f"skipped {configuration.name}: {exc} (not in the core yet)")
    for case in cases:
        for configuration in configurations:
            if configuration.name in out.skipped:
                continue
            started = time.perf_counter()
            runs = []
            for seed in seeds:
                _, result = simulate(case, configuration, seed, duration)
                runs.append(measure(result.summary, result.end, duration))
            cell = Cell(case, configuration, tuple(runs))
            out.cells.append(cell)
            m = cell.median
            say(f"{case.name:<12} {configuration.name:<14} {len(seeds)} seed(s) in "
                f"{time.perf_counter() - started:5.1f} s: loads/served "
                f"{m.loads_per_served:.3f}, p99 wait {m.wait_p99:.2f} s, errors {m.errors:g}")
    return out


HEADER = ("| configuration | loads / served | wait p50 (s) | wait p99 (s) | longest wait (s) "
          "| memory-time (GiB·s) | served | errors |")


def _num(x: float, digits: int) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def tables(comparison: Comparison) -> str:
    blocks = []
    for case in dict.fromkeys(c.case for c in comparison.cells):
        rows = [HEADER, "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for cell in comparison.cells:
            if cell.case is not case:
                continue
            m = cell.median
            rows.append(f"| {cell.configuration.name} | {_num(m.loads_per_served, 3)} | "
                        f"{_num(m.wait_p50, 2)} | {_num(m.wait_p99, 2)} | "
                        f"{_num(m.starvation, 1)} | {m.memory_time:,.0f} | {m.served:g} | "
                        f"{m.errors:g} |")
        about = case.about[:1].upper() + case.about[1:]
        blocks.append(f"### {case.name}\n\n{about}.\n\n" + "\n".join(rows))
    if comparison.skipped:
        blocks.append("Skipped (the core has no field for them yet):\n\n" + "\n".join(
            f"- {name}: {why}" for name, why in comparison.skipped.items()))
    return "\n\n".join(blocks)


# -- the picture --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Picture:
    case: str
    configuration: str
    window: tuple[float, float]  # the stretch drawn in detail, seconds
    caption: str

    @property
    def name(self) -> str:
        return f"policies-{self.case}-{self.configuration}.svg"


PICTURES = (
    Picture("ab", "naive-lru", (0.0, 90.0),
            "each request for the other model evicts the one that is serving (red triangles), "
            "and the requests in flight on it fail (red crosses): more loads than requests "
            "served, and errors, where fifo has neither"),
    Picture("streams", "fifo", (0.0, 300.0),
            "a model with streams in flight drains (takes no new request) until it can be "
            "evicted idle, so requests for the other models queue behind 15-45 s streams: "
            "nothing fails, but waits climb to a minute"),
)


def draw(picture: Picture, seed: int, duration: float, path: Path) -> str | None:
    """Write the picture to ``path``: simulator/plot.py's SVG, which a Markdown page shows as
    it is. ``None`` when done, else why not."""
    from simulator.plot import render_svg
    case = next(c for c in CASES if c.name == picture.case)
    configuration = next(c for c in CONFIGURATIONS if c.name == picture.configuration)
    config, result = simulate(case, configuration, seed, duration, record=True)
    assert result.trace is not None
    title = (f"{case.name} under {configuration.name}, seed {seed}, {picture.window[0]:g}-"
             f"{picture.window[1]:g} s of {duration:g} s (python bench/policies.py --write)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_svg(result.trace, config, title=title, window=picture.window),
                    encoding="utf-8")
    return None


# -- the command --------------------------------------------------------------------------------


def _choices(title: str, known: Sequence[Case] | Sequence[Configuration]) -> str:
    lines = [f"{title}:"]
    for k in known:
        lines += textwrap.wrap(k.about, width=79, initial_indent=f"  {k.name:<15}",
                               subsequent_indent=" " * 17)
    return "\n".join(lines)


def _pick(names: str | None, known: Sequence[Any], what: str) -> list[Any]:
    if names is None:
        return list(known)
    by_name = {k.name: k for k in known}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown or not wanted:
        raise SystemExit(f"bench/policies.py: unknown {what} {', '.join(unknown) or '(none)'}; "
                         f"known: {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


def document(comparison: Comparison, command: str, pictures: Sequence[Picture]) -> str:
    seeds = comparison.seeds
    lines = [
        f"Command: `{command}` ({len(seeds)} seeds, {seeds[0]}-{seeds[-1]}, each "
        f"{comparison.duration / 60:g} simulated minutes of arrivals, children that load in "
        "0.3-1.5 s and never fail; every figure is the median over the seeds). One device of "
        "the given budget; each request's service time is exponential, mean 0.2 s, unless the "
        "workload says otherwise.",
        "",
        "- **loads / served**: children spawned per request served ok (below 1: loads are "
        "shared; above 1: thrash).",
        "- **wait p50 / p99**: from a request's arrival until it was forwarded to a ready "
        "child (load time included), over the forwarded requests.",
        "- **longest wait**: starvation: the longest any request waited for an answer "
        "(forwarded, an error, or none by the end of the run).",
        "- **memory-time**: GiB held by children on the device, from spawn to exit, integrated "
        "over the arrival window (so a TTL that unloads after the last request is not charged "
        "for the run's tail).",
        "- **errors**: requests answered with an error, broken off by an evicted child, or "
        "never answered.",
        "",
        tables(comparison),
    ]
    for picture in pictures:
        what = (f"{picture.case} under {picture.configuration}, seed {seeds[0]}, "
                f"{picture.window[0]:g}-{picture.window[1]:g} s")
        lines += ["", f"![{what}](img/{picture.name})", "", f"*{what}*: {picture.caption}."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/policies.py",
        description="Simulate the same workloads under each scheduling policy and section 7 "
                    "policy, and tabulate loads per served request, waits, starvation and "
                    "memory-time (medians over the seeds).",
        epilog=_choices("workloads (--workloads)", CASES) + "\n\n"
               + _choices("configurations (--configurations)", CONFIGURATIONS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds per cell (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--duration", type=parse_duration, default=parse_duration("30m"),
                   help="simulated time with arrivals, like 90s, 30m (default: 30m)")
    p.add_argument("--workloads", metavar="A,B", help="a subset, comma-separated (default: all)")
    p.add_argument("--configurations", metavar="A,B",
                   help="a subset, comma-separated (default: all)")
    p.add_argument("--write", action="store_true",
                   help=f"write the tables to {DOC.relative_to(ROOT)} and draw the pictures")
    p.add_argument("--doc", type=Path, default=DOC, metavar="FILE.md",
                   help="with --write: the document to write, its pictures in img/ beside it "
                        f"(default: {DOC.relative_to(ROOT)})")
    a = p.parse_args(argv)
    if a.seeds < 1:
        p.error("--seeds must be at least 1")
    cases = _pick(a.workloads, CASES, "workload")
    configurations = _pick(a.configurations, CONFIGURATIONS, "configuration")
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    started = time.perf_counter()

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    comparison = compare(cases, configurations, seeds, a.duration, say)
    say(f"{len(comparison.cells)} cells x {len(seeds)} seeds in "
        f"{time.perf_counter() - started:.1f} s")
    print(tables(comparison))
    if a.write:
        command = "python bench/policies.py --write" + "".join(
            f" {flag}" for flag in (argv if argv is not None else sys.argv[1:])
            if flag != "--write")
        names = {(c.case.name, c.configuration.name) for c in comparison.cells}
        pictures = [pic for pic in PICTURES if (pic.case, pic.configuration) in names]
        drawn = []
        for pic in pictures:
            path = a.doc.parent / "img" / pic.name  # beside the document, as its links say
            problem = draw(pic, seeds[0], a.duration, path)
            if problem is None:
                drawn.append(pic)
                say(f"drew {path}")
            else:
                say(f"{path} not drawn: {problem}")
        path = write_section(MARK, document(comparison, command, drawn), a.doc)
        say(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
