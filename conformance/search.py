"""``python -m conformance.search``: a live search for races in a router, Jepsen-style.

Hypothesis generates programs of concurrent steps (``conformance/live_program.py``: bursts of
requests released together, streams, clients that leave, requests held in their child, loads,
unloads, children paused and killed at chosen points of their life, downloads from a loopback
hub, reloads, upstream's ``LLAMA_SERVER_DEBUG_FAKE_TIMING`` hook), in a world that may start
with a model loaded, and
plays each against a fresh router on 127.0.0.1: the reference router by default (with fake
children, which can load slowly or speak out of turn by their model's name), or a llama-server
binary (``--router-bin``). Each run's history is checked by the file's own checks and by the
invariants of ``properties/observed.py``. A failure is shrunk and written out as a standalone
reproduction (``conformance/repros/``), which is then run ``--repeat`` times to say how often it
fails. The hypothesis example database (``out/search-db/``) keeps failures between runs.

A check that depends on timing (an unload of a LOADING child taking too long) is reported apart
and does not stop the search, unless ``--timing-checks fail``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from fixtures.hub import MODEL_XS
from fixtures.procs import executable

from . import live_program as lp

ROOT = Path(__file__).resolve().parent.parent
REPROS = ROOT / "conformance" / "repros"
DB = ROOT / "out" / "search-db"
WORK = ROOT / "out" / "search"
# Fake children load for 0.3 s (slow-load: 3 s), so that a step can meet a child loading.
FAKE = (f"{sys.executable} -m fixtures.fake_child --faults-from-name --fault-seconds 3 "
        "--load-seconds 0.3")
PLAIN = ("a", "b", "c")  # the models every program may name
# fake children: loads for 3 s; says unknown states first; ignores the exit command (a stop
# takes the whole --stop-timeout, 2 s, and ends in a kill)
ODD = ("slow-load", "unknown-state", "hang-on-exit")
# a model of the loopback hub (fixtures/hub.py), which a program downloads before it can use it
HUB_MODELS = (MODEL_XS,)
# The hub, one per program that names a hub model; its downloads take about a second (the model
# is 590 KiB), so that steps can meet a download under way.
HUB = [sys.executable, "-m", "fixtures.hub", "--throttle", "600000"]


@dataclass(frozen=True)
class Profile:
    name: str
    budget: float  # seconds of search before shrinking
    shrink: float  # seconds of shrinking at most
    max_steps: int
    pauses: tuple[float, ...]
    holds: tuple[float, ...]  # how long a held request takes in its child


# Past the longest a router might wait for a busy model before giving up on it (a drain timeout:
# llama-server has none; the reference router's is 30 s, used by its drain-timeout policy only):
# a request held longer keeps its model busy past it (Z19's trigger). A long hold costs its
# program that time only where another model's request waits for the held one (Run.play ends
# pauses early otherwise). A Setup says what "past" is for its router: the reference router is
# started with ``--drain-timeout 3`` and its holds past the drain take 5 s.
PAST_DRAIN = 35.0
PROFILES = {
    # quick: CI, a few minutes; long: nightly, longer programs and pauses past the drain timeout
    "quick": Profile("quick", 180.0, 120.0, 6, (0.3, 1.0, 3.0), (1.0, 3.0, PAST_DRAIN)),
    "long": Profile("long", 1800.0, 600.0, 10, (0.3, 1.0, 3.0, PAST_DRAIN),
                    (1.0, 3.0, PAST_DRAIN, PAST_DRAIN)),
}


def programs(profile: Profile, past_drain: float = PAST_DRAIN
             ) -> st.SearchStrategy[lp.Program]:
    """Each program names two or three models, so that its steps meet on them; about one in
    three names the hub's model (and then has download and reload steps). ``past_drain``: what
    the profile's holds and pauses past the drain timeout take for the router under test."""
    profile = replace(profile, holds=_past(profile.holds, past_drain),
                      pauses=_past(profile.pauses, past_drain))
    plain, odd = st.sampled_from(PLAIN), st.sampled_from(ODD)
    name = st.one_of(plain, odd, plain, odd, plain, odd, st.sampled_from(HUB_MODELS))
    names = st.lists(name, min_size=2, max_size=3, unique=True)
    return names.flatmap(lambda models: _programs(profile, tuple(models)))


def _past(seconds: tuple[float, ...], past_drain: float) -> tuple[float, ...]:
    return tuple(past_drain if s == PAST_DRAIN else s for s in seconds)


def _programs(profile: Profile, models: tuple[str, ...]) -> st.SearchStrategy[lp.Program]:
    model = st.sampled_from(models)
    # A client that leaves, or one that waits for a request held in its child (a generation
    # that takes that long: what keeps a model busy while other requests come).
    chat = st.one_of(
        st.builds(lp.Chat, model, stream=st.booleans(), tokens=st.sampled_from([4, 16]),
                  leave=st.sampled_from([None, None, None, 0.05, 0.5])),
        st.builds(lp.Chat, model, stream=st.booleans(), tokens=st.sampled_from([4, 16]),
                  hold=st.sampled_from(profile.holds)))
    steps = [
        chat,
        # released together, or one after the other by 50-100 ms (upstream's triggers: "request
        # A, then B 100 ms later", #28698)
        st.builds(lp.Burst, st.lists(chat, min_size=2, max_size=4).map(tuple),
                  stagger=st.sampled_from([0.0, 0.0, 0.05, 0.1])),
        st.builds(lp.Get, model, path=st.sampled_from(["/props", "/slots"]),
                  query=st.sampled_from(["foo=1", ""])),
        st.builds(lp.Load, model),
        st.builds(lp.Unload, model),
        st.builds(lp.Pause, model, seconds=st.sampled_from(profile.pauses)),
        st.builds(lp.Kill, model,
                  when=st.sampled_from(["now", "loading", "loading", "loaded", "stopping"])),
        st.builds(lp.Wait, st.sampled_from([0.05, 0.3, 1.0])),
    ]
    hub = [m for m in models if lp.is_hub_model(m)]
    if hub:  # the catalog changes only by downloads here: a reload matters beside them
        steps += [st.builds(lp.Download, st.sampled_from(hub)), st.just(lp.Reload())]
    # An idle model is the first condition of most races (a request for another model evicts
    # it; a request for it comes as it stops): in most worlds one or two are loaded first.
    local = [m for m in models if not lp.is_hub_model(m)]
    loaded = st.sampled_from([(), *((m,) for m in local),
                              *((m, n) for m in local for n in local if m < n)])
    world = st.builds(lp.World, models_max=st.sampled_from([1, 1, 2, 0]),
                      fake_timing=st.booleans(),  # widens the load and routing windows
                      loaded=loaded)
    return st.builds(lp.Program, st.lists(st.one_of(steps), min_size=1,
                                          max_size=profile.max_steps).map(tuple), world)


# -- the router under test --------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    """How to start the router under test: its command line (``{port}`` where the port goes;
    the world adds ``--models-max``), its extra environment, its models."""

    name: str
    base: list[str]
    env: dict[str, str]
    models_dir: Path
    hub: list[str] | None = None  # the hub's command line, for programs that download
    past_drain: float = PAST_DRAIN  # a hold longer than the router's drain timeout


def models_dir(root: Path) -> Path:
    """Copies of the smallest tiny model, one per name a program may use."""
    from fixtures.tiny_models import build_models_dir, default_cache_dir
    tiny = build_models_dir(default_cache_dir())["tiny-xs"].path
    root.mkdir(parents=True, exist_ok=True)
    for name in PLAIN + ODD:
        target = root / f"{name}.gguf"
        if not target.exists() or target.stat().st_size != tiny.stat().st_size:
            shutil.copyfile(tiny, target)
    return root


def setup(router_bin: str | None, mutant: str | None, children: str) -> Setup:
    models = models_dir(WORK / "models")
    env: dict[str, str] = {}
    if mutant:
        from properties.mutants import variables
        env = variables([mutant])
    if router_bin:
        base = [router_bin, "--host", "127.0.0.1", "--port", "{port}", "--models-dir",
                str(models)]
        return Setup("llama-server", base, env, models, HUB)
    # (--drain-timeout: see PAST_DRAIN; the policy is fifo, which never uses it)
    base = [sys.executable, "-m", "refimpl", "--host", "127.0.0.1", "--port", "{port}",
            "--models-dir", str(models), "--stop-timeout", "2", "--drain-timeout", "3"]
    if children == "fake":
        base += ["--child-cmd", FAKE]
    name = "refimpl" + ("" if children == "fake" else "-real") + (f"-{mutant}" if mutant else "")
    return Setup(name, base, env, models, HUB, past_drain=5.0)


# -- the search -------------------------------------------------------------------------------

def size(program: lp.Program) -> tuple[int, int]:
    """Smaller is simpler: fewer steps (a burst counts its requests), then less text."""
    steps = sum(len(s.chats) if isinstance(s, lp.Burst) else 1 for s in program.steps)
    return steps, len(repr(program))


class Found(AssertionError):
    """A program failed (hypothesis shrinks it)."""


@dataclass
class Result:
    setup: Setup
    found: bool = False
    seconds_to_find: float | None = None
    examples: int = 0
    shrink_runs: int = 0
    program: lp.Program | None = None
    failures: list[lp.Failure] = field(default_factory=list)
    first: lp.Program | None = None
    timing: list[tuple[lp.Program, list[lp.Failure]]] = field(default_factory=list)
    seconds: float = 0.0
    repro: Path | None = None
    reproduced: tuple[int, int] | None = None  # (failed, runs)


def search(s: Setup, profile: Profile, *, budget: float | None = None,
           shrink_budget: float | None = None, timing_fails: bool = False,
           db: Path | None = None, say: Callable[[str], None] = print,
           chunk: int = 10, seed: int | None = None) -> Result:
    """Search for ``budget`` seconds (then shrink for ``shrink_budget`` at most, or until a
    program of one step fails). ``seed``: draw the same programs as another search with it
    (None: fresh ones each time)."""
    budget = profile.budget if budget is None else budget
    shrink_budget = profile.shrink if shrink_budget is None else shrink_budget
    result = Result(s)
    start = time.monotonic()
    deadline = [start + budget]
    logs = WORK / "logs" / s.name
    logs.mkdir(parents=True, exist_ok=True)

    def probe(program: lp.Program) -> None:
        if time.monotonic() > deadline[0]:
            return  # budget spent: hypothesis's remaining calls pass at once
        n = result.examples + result.shrink_runs + 1
        history, failures, _ = lp.play(program, s.base, s.models_dir,
                                        logs / f"router-{n % 20}.log", s.env, s.hub)
        timing = [f for f in failures if f.timing]
        hard = [f for f in failures if not f.timing or timing_fails]
        if result.found:
            result.shrink_runs += 1
        else:
            result.examples += 1
        if timing and not timing_fails:
            result.timing.append((program, timing))
        t = time.monotonic() - start
        phase = "shrink" if result.found else "search"
        verdict = "; ".join(map(str, hard))[:300] if hard else "ok"
        world = program.world
        say(f"[{t:7.1f}s] {phase} #{n} {len(program.steps)} steps, "
            f"models_max {world.models_max}"
            f"{', fake timing' if world.fake_timing else ''}"
            f"{', loaded ' + ' '.join(world.loaded) if world.loaded else ''}"
            f"{', hub' if program.needs_hub() else ''}: {verdict}")
        if hard:
            if not result.found:
                result.found = True
                result.seconds_to_find = t
                result.first = program
                deadline[0] = time.monotonic() + shrink_budget
            say(f"  {program}")
            if result.program is None or size(program) < size(result.program):
                result.program, result.failures = program, hard
            if size(program)[0] <= 1:  # one request: no fewer steps to shrink to
                deadline[0] = time.monotonic()
            raise Found("; ".join(map(str, hard)))

    database = DirectoryBasedExampleDatabase(str(db or DB / s.name))
    first_chunk = True
    chunks = 0
    while time.monotonic() < deadline[0] and not result.found:
        phases = [Phase.generate, Phase.shrink]
        if first_chunk:  # what earlier runs found comes first
            phases.insert(0, Phase.reuse)
        run = settings(max_examples=chunk, deadline=None, database=database, phases=phases,
                       suppress_health_check=list(HealthCheck), print_blob=False,
                       derandomize=False)(given(programs(profile, s.past_drain))(probe))
        if seed is not None:  # each chunk its own programs, the same in every search
            run = hypothesis_seed(seed * 1_000_003 + chunks)(run)
        chunks += 1
        first_chunk = False
        try:
            run()
        except Exception as exc:  # Found, or hypothesis's Flaky when a replay passed
            if not result.found:
                raise
            say(f"hypothesis ended with {type(exc).__name__}")
    result.seconds = time.monotonic() - start
    return result


# -- the reproduction ----------------------------------------------------------------------------

REPRO_TAIL = '''

# -- this reproduction ------------------------------------------------------------------------

def _here(value):
    """The recorded value with this machine's paths: ``<python>`` this Python, ``<root>`` the
    harness's checkout ($LLAMA_ROUTER_HARNESS_ROOT, else this file's grandparent folder when it
    is one, else the working folder), and
    ``<llama-server>`` $LLAMA_SERVER_BIN_PATH (else ``llama-server`` on the PATH)."""
    import sys
    here = Path(__file__).resolve().parents[2]  # conformance/repros/ of a checkout
    root = os.environ.get("LLAMA_ROUTER_HARNESS_ROOT") or (
        str(here) if (here / "refimpl").is_dir() else os.getcwd())
    places = {{"<python>": sys.executable, "<root>": root,
               "<llama-server>": os.environ.get("LLAMA_SERVER_BIN_PATH", "llama-server")}}
    if isinstance(value, str):
        for mark, place in places.items():
            value = value.replace(mark, place)
        return value
    if isinstance(value, dict):
        return {{k: _here(v) for k, v in value.items()}}
    return [_here(v) for v in value]


COMMAND = _here({command!r})  # "{{port}}": a free port
EXTRA_ENV = _here({env!r})
MODELS_DIR = _here({models!r})
HUB = _here({hub!r}) or None  # the hub's command line, run in CWD
CWD = _here({cwd!r})
PROGRAM = {program!r}
FOUND = {found!r}


def main() -> int:
    import argparse
    import sys
    import tempfile
    p = argparse.ArgumentParser(description="Replay a program found by conformance.search "
                                            "against the router it was found on.")
    p.add_argument("--repeat", type=int, default=1, help="runs (default 1); prints how many failed")
    p.add_argument("--no-extra-env", action="store_true",
                   help="start the router without EXTRA_ENV (e.g. without the zoo mutant)")
    p.add_argument("--verbose", action="store_true", help="print each run's history")
    args = p.parse_args()
    os.chdir(CWD)
    env = {{}} if args.no_extra_env else EXTRA_ENV
    failed = 0
    print("program:", PROGRAM)
    print("expected: every check passes; when found it failed:")
    for line in FOUND:
        print("  -", line)
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            history, failures, run = play(PROGRAM, COMMAND, Path(MODELS_DIR),
                                          Path(tmp) / "router.log", env, HUB)
            log = run.log_path.read_text(errors="replace")[-3000:]
        failed += bool(failures)
        print(f"run {{i + 1}}: " + ("FAILED" if failures else "passed"))
        for f in failures:
            print("  happened:", f)
        if args.verbose or (failures and args.repeat == 1):
            print("  history:")
            print("\\n".join("    " + line for line in history.lines()))
            print("  router log (tail):")
            print("\\n".join("    " + line for line in log.splitlines()[-40:]))
    print(f"failed {{failed}} of {{args.repeat}} runs")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
'''


def portable(value: Any, binary: str | None = None) -> Any:
    """``value`` (a string, or a list or dict of them) with this machine's paths as the marks a
    reproduction resolves where it runs (``_here`` in it): this Python, the checkout, the
    llama-server binary. A reproduction names no path of the machine it was found on."""
    if isinstance(value, dict):
        return {k: portable(v, binary) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, binary) for v in value]
    if not isinstance(value, str):
        return value
    marks = [(sys.executable, "<python>"), (str(ROOT), "<root>")]
    if binary:
        marks.insert(0, (binary, "<llama-server>"))
    for path, mark in marks:
        value = value.replace(path, mark)
    return value


def write_repro(result: Result, directory: Path = REPROS) -> Path:
    """One file: live_program.py's source, the router's command line and the shrunk program."""
    assert result.program is not None
    source = Path(lp.__file__).read_text()
    body = re.sub(r'\A""".*?"""\n', "", source, count=1, flags=re.DOTALL)
    checks = "-".join(sorted({f.check.split(".")[-1] for f in result.failures}))[:60]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"{result.setup.name}-{checks}-{stamp}.py"
    directory.mkdir(parents=True, exist_ok=True)
    command, env = lp.command_for(result.program, result.setup.base)
    header = (f'"""Reproduction written by `python -m conformance.search` ({stamp}).\n\n'
              f"Router: {result.setup.name}; {len(result.program.steps)} steps after "
              f"shrinking.\nFailed: "
              + "; ".join(str(f) for f in result.failures)[:600].replace("\\", "/")
              + "\n\nRun: python " + path.name + " [--repeat 10] [--no-extra-env] "
              "[--verbose]\nNeeds only httpx and the standard library (inside the harness's "
              "checkout it also applies properties/observed.py)"
              + ("; its program downloads, from the hub that HUB starts (the harness's "
                 "fixtures/hub.py)" if result.program.needs_hub() else "")
              + ".\n"
              '"""\n')
    del command, env  # the world's flags are added at play time (command_for)
    binary = result.setup.base[0] if result.setup.name == "llama-server" else None
    tail = REPRO_TAIL.format(command=portable(result.setup.base, binary),
                             env=portable(result.setup.env, binary),
                             models=portable(str(result.setup.models_dir), binary),
                             cwd=portable(str(ROOT), binary),
                             hub=portable(result.setup.hub or [], binary),
                             program=result.program, found=[str(f) for f in result.failures])
    path.write_text("#!/usr/bin/env python3\n" + header + body + tail)
    return path


def refresh_repro(path: Path) -> None:
    """Give a written reproduction the current ``live_program.py`` (its checks as fixed since),
    keeping its header, router and program."""
    text = path.read_text()
    head_end = text.index('"""\n', text.index('"""') + 3) + 4
    tail_start = text.index("\n\n# -- this reproduction ---")
    body = re.sub(r'\A""".*?"""\n', "", Path(lp.__file__).read_text(), count=1, flags=re.DOTALL)
    path.write_text(text[:head_end] + body.rstrip("\n") + text[tail_start:])


def reproduce(path: Path, repeat: int, *, no_extra_env: bool = False,
              timeout: float = 600.0) -> tuple[int, int, str]:
    """Run a reproduction: (runs that failed, runs, its output)."""
    cmd = [sys.executable, str(path), "--repeat", str(repeat)]
    if no_extra_env:
        cmd.append("--no-extra-env")
    env = {**os.environ, "LLAMA_ROUTER_HARNESS_ROOT": str(ROOT)}  # wherever the file lies
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          cwd=path.parent, env=env)
    m = re.search(r"failed (\d+) of (\d+) runs", proc.stdout)
    failed, runs = (int(m.group(1)), int(m.group(2))) if m else (repeat, repeat)
    return failed, runs, proc.stdout + proc.stderr


# -- the command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m conformance.search",
        description=(__doc__ or "").split("\n\n", 1)[1].split("\n\nA check")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 when nothing was found, 1 when a failure was (its reproduction "
               "written), 2 on a usage error.\nExamples:\n"
               "  python -m conformance.search --profile quick\n"
               "  python -m conformance.search --mutant Z10 --budget 120\n"
               "  python -m conformance.search --router-bin build/bin/llama-server "
               "--profile long")
    p.add_argument("--router-bin", metavar="PATH",
                   help="a llama-server binary to search (default: the reference router)")
    p.add_argument("--children", choices=["fake", "real"], default="fake",
                   help="reference router only: its children; fake (fixtures/fake_child.py: "
                        "quick, faults by model name) or real (llama-cpp-python) "
                        "(default: %(default)s)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                   help="quick: a few minutes, programs of up to 6 steps (CI); long: 30 "
                        "minutes, up to 10 steps, pauses past the drain timeout (nightly) "
                        "(default: %(default)s)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="seconds of search before shrinking (default: the profile's)")
    p.add_argument("--shrink-budget", type=float, metavar="SECONDS",
                   help="seconds of shrinking at most (default: the profile's)")
    p.add_argument("--mutant", metavar="ZN",
                   help="reference router only: run it under a bug-zoo mutant "
                        "(properties/mutants; shared/spec/BUGZOO.md)")
    p.add_argument("--timing-checks", choices=["report", "fail"], default="report",
                   help="a timing-dependent check that fails: reported apart (default) or a "
                        "failure like the others")
    p.add_argument("--repeat", type=int, default=10,
                   help="runs of the written reproduction (default: %(default)s)")
    p.add_argument("--db", type=Path, help=f"hypothesis example database (default: "
                                           f"{DB.relative_to(ROOT)}/<router>)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON")
    p.add_argument("--seed", type=int, help="draw the same programs as another search with "
                                            "this seed (default: fresh ones each run)")
    p.add_argument("--keep-going", action="store_true",
                   help="after a find (shrunk, written, re-run), search again until the budget "
                        "is spent: every failure of a long run, not only the first")
    p.add_argument("--zoo", nargs="*", metavar="ZN",
                   help="measure: search the reference router under each of these mutants "
                        f"(none named: {' '.join(LIVE)}), one after the other, each with the "
                        "budget and a fresh example database; print the table")
    args = p.parse_args(argv)
    if args.router_bin is not None and not executable(args.router_bin):
        p.error(f"--router-bin {args.router_bin}: not an executable file")
    for name in ("budget", "shrink_budget"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} {value:g}: give a number of seconds above 0")
    if args.zoo:
        from properties.mutants import MUTANTS
        unknown = [z for z in args.zoo if z not in MUTANTS]
        if unknown:
            p.error(f"unknown mutant(s) {' '.join(unknown)}; known: {', '.join(MUTANTS)}")
    if args.zoo is not None:
        return zoo(args.zoo or list(LIVE), PROFILES[args.profile], args.budget,
                   args.shrink_budget, args.repeat, args.timing_checks == "fail", args.json)
    if args.mutant and args.router_bin:
        p.error("--mutant applies to the reference router only")
    if args.mutant:
        from properties.mutants import MUTANTS
        if args.mutant not in MUTANTS:
            p.error(f"unknown mutant {args.mutant}; known: {', '.join(MUTANTS)}")
    profile = PROFILES[args.profile]
    s = setup(args.router_bin, args.mutant, args.children)
    total = profile.budget if args.budget is None else args.budget
    print(f"searching {s.name} for {total:g} s (profile {profile.name}"
          f"{', keeps going after a find' if args.keep_going else ''}): {' '.join(s.base)}",
          flush=True)
    start = time.monotonic()
    results: list[Result] = []
    while True:
        left = total - (time.monotonic() - start)
        if results and (not args.keep_going or left < 30):
            break
        # each round after a find starts with a fresh database: the old one would replay it
        db = args.db if not results else (args.db or DB / s.name).with_name(
            f"{(args.db or DB / s.name).name}-round{len(results) + 1}")
        result = search(s, profile, budget=left, shrink_budget=args.shrink_budget,
                        timing_fails=args.timing_checks == "fail", db=db,
                        say=lambda line: print(line, flush=True),
                        seed=None if args.seed is None else args.seed + len(results))
        results.append(result)
        _report(result, args.repeat)
        if not result.found:
            break
    if args.json:
        rows = [summary(r) for r in results]
        args.json.write_text(json.dumps(rows if args.keep_going else rows[0], indent=1) + "\n")
    return 1 if any(r.found for r in results) else 0


def _report(result: Result, repeat: int) -> None:
    """Print one search's outcome; write (and re-run) its reproduction if it found one."""
    print()
    print(f"{result.examples} programs in {result.seconds:.0f} s, "
          f"{result.shrink_runs} runs while shrinking")
    for program, timing in result.timing:
        print(f"timing-dependent (reported apart): {'; '.join(map(str, timing))}\n  {program}")
    if not result.found:
        print("nothing found", flush=True)
        return
    result.repro = write_repro(result)
    print(f"FOUND after {result.seconds_to_find:.1f} s, shrunk to "
          f"{len(result.program.steps)} steps:\n  {result.program}")  # type: ignore[union-attr]
    for f in result.failures:
        print(f"  {f}")
    print(f"reproduction: {result.repro}", flush=True)
    if repeat:
        failed, runs, _ = reproduce(result.repro, repeat)
        result.reproduced = (failed, runs)
        print(f"it fails {failed} of {runs} runs", flush=True)


# The zoo's mutants that can exist live, against a router process (BUGZOO.md): Z11-Z13 are in
# the line protocol and the child's output, which a router's client does not reach.
LIVE = ("Z1", "Z2", "Z3", "Z4", "Z5", "Z6", "Z7", "Z8", "Z9", "Z10", "Z14", "Z15", "Z16", "Z17",
        "Z18", "Z19", "Z20", "Z21")


def zoo(names: list[str], profile: Profile, budget: float | None, shrink: float | None,
        repeat: int, timing_fails: bool, out: Path | None) -> int:
    """Search under each mutant in turn; print a markdown table row as each ends."""
    import tempfile
    rows = []
    print("| mutant | found | seconds to find | programs | steps after shrinking | "
          "reproduces | check that failed |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        s = setup(None, name, "fake")
        with tempfile.TemporaryDirectory() as db:
            r = search(s, profile, budget=budget, shrink_budget=shrink,
                       timing_fails=timing_fails, db=Path(db), say=lambda line: None)
        if r.found:
            r.repro = write_repro(r)
            if repeat:
                failed, runs, _ = reproduce(r.repro, repeat)
                r.reproduced = (failed, runs)
        checks = ", ".join(sorted({f.check + (" (timing)" if f.timing else "")
                                   for f in r.failures}))
        rows.append(summary(r) | {"mutant": name})
        print(f"| {name} | {'yes' if r.found else 'no'} | "
              f"{f'{r.seconds_to_find:.0f}' if r.found else f'> {r.seconds:.0f}'} | "
              f"{r.examples} | {len(r.program.steps) if r.program else '-'} | "
              f"{f'{r.reproduced[0]} of {r.reproduced[1]}' if r.reproduced else '-'} | "
              f"{checks or '-'} |", flush=True)
        if out:
            out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def summary(result: Result) -> dict[str, Any]:
    return {
        "router": result.setup.name, "found": result.found,
        "seconds_to_find": result.seconds_to_find, "examples": result.examples,
        "shrink_runs": result.shrink_runs, "seconds": result.seconds,
        "steps": len(result.program.steps) if result.program else None,
        "program": repr(result.program) if result.program else None,
        "failures": [str(f) for f in result.failures],
        "timing": [[repr(p), [str(f) for f in fs]] for p, fs in result.timing],
        "repro": str(result.repro) if result.repro else None,
        "reproduced": result.reproduced,
    }


if __name__ == "__main__":
    sys.exit(main())
