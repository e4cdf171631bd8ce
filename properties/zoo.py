"""``python -m properties.zoo``: every bug-zoo mutant against the tests that can kill it.

A mutant (``properties/mutants``) is run against the tests of its layer, in a fresh pytest process
whose whole process tree applies it (``properties.mutants.environment``: the routers and children
the tests start carry the bug too). It is *killed* when a test fails; the table names the first
failing test and the time the run took. Each set of tests first runs with no mutant and must pass:
a suite that fails on the correct code kills nothing. The core-level suite is the baseline of the
core and protocol layers; the live layers (child, process, proxy) get their own baseline run.

The pytest runs are independent units: they run on a dask ``LocalCluster`` (one per core), on the
cluster of ``--scheduler`` (whose workers need a checkout of the same commit: the tests are not in
the wheel), or in this process with ``--workers 0`` (``simulator/distributed.py``). The baselines
run first, then every mutant; rows print in table order as they end.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import write_section
from simulator.cli import positive_int
from simulator.distributed import default_workers, executor, in_order
from simulator.progress import Progress

from .mutants import LAYERS, MUTANTS, StaleMutant, apply, environment

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "MUTANTS.md"
MARK = "<!-- properties.zoo -->"

# The core-level suite: no ports, no real children. The scenario tests come first: they are quick
# and name the bug they replay. Files are listed one by one because pytest regroups a file with
# the folder around it when both are named.
CORE = ["tests/test_bugzoo.py", "properties", "tests/test_core.py", "tests/test_scheduler.py",
        "tests/test_lifecycle.py", "tests/test_protocol.py", "tests/test_download_core.py",
        "tests/test_simulator.py", "tests/test_observed.py", "tests/test_plot.py",
        "tests/test_fuzz_entry.py"]
PROTOCOL = ["tests/test_protocol.py", *(p for p in CORE if p != "tests/test_protocol.py")]
LAYER_TESTS: dict[str, list[str]] = {
    "core": CORE,
    "protocol": PROTOCOL,
    "child": ["tests/test_announcer.py", "tests/test_child.py"],
    "process": ["tests/test_dead_child.py", "tests/test_driver.py"],
    # The whole router under simulation first (seconds, no ports), then the conformance suite's
    # proxy clauses, and the proxy tests whose fake children echo what reached them (a dropped
    # query string is invisible to a real child).
    "proxy": ["properties/test_whole_router.py", "conformance/test_api.py",
              "tests/test_proxy.py"],
}
assert set(LAYER_TESTS) == set(LAYERS)
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


@dataclass
class Outcome:
    failed: bool  # a test failed (or pytest could not run them)
    by: str  # the first failing test, "-" when all passed, or why the run did not finish
    seconds: float
    failures: int
    why: str = ""  # the first assertion or error line of the first failure

    @property
    def passed(self) -> bool:
        return not self.failed and self.by == "-"


@dataclass(frozen=True)
class TestRun:
    """One unit of the zoo: :func:`run_tests`'s arguments."""
    __test__ = False  # not a pytest test class, despite its name

    mutant: str | None
    paths: tuple[str, ...]
    first_only: bool
    timeout: float


def run_unit(run: TestRun) -> Outcome:
    """Runs on a worker (or in this process)."""
    return run_tests(run.mutant, list(run.paths), first_only=run.first_only, timeout=run.timeout)


def run_tests(mutant: str | None, paths: list[str], *, first_only: bool,
              timeout: float) -> Outcome:
    """One fresh pytest process over ``paths``, its whole tree running ``mutant`` (or none)."""
    env = environment([mutant] if mutant else [])
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
           "--hypothesis-profile", "zoo", *(["-x"] if first_only else []), *paths]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome(False, f"(still running after {timeout:g} s)", time.perf_counter() - started,
                       0)
    seconds = time.perf_counter() - started
    failed = FAILED.findall(proc.stdout)
    if proc.returncode == 0:
        return Outcome(False, "-", seconds, 0)
    if not failed:  # an error outside any test: show pytest's last words
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["pytest failed"]
        return Outcome(True, f"(run error) {tail[0]}", seconds, 0)
    why = next((line[1:].strip() for line in proc.stdout.splitlines() if line.startswith("E ")),
               "")
    return Outcome(True, failed[0], seconds, len(failed), why[:300])


def stale(names: list[str] | None = None) -> list[str]:
    """The mutants (``names``, default all) that no longer apply to the source, each with why."""
    out = []
    for name in names or MUTANTS:
        try:
            apply([name])()
        except StaleMutant as exc:
            out.append(f"{name}: {exc}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m properties.zoo",
        description="Run every bug-zoo mutant against the tests of its layer and print which "
                    "test kills it. Exit status 1 if a mutant survives or a baseline fails.")
    parser.add_argument("mutants", nargs="*", metavar="ZN",
                        help=f"mutants to run (default: all: {', '.join(MUTANTS)})")
    parser.add_argument("--all-failures", action="store_true",
                        help="run all the tests for each mutant and count every failing one "
                             "(slower; the default stops at the first)")
    parser.add_argument("--tests", nargs="+", metavar="PATH", default=None,
                        help="run these test files or folders for every mutant instead of its "
                             "layer's, e.g. properties/test_stateful.py to see what the state "
                             "machine kills on its own")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds allowed per pytest run (default: %(default)s)")
    parser.add_argument("--write", action="store_true",
                        help=f"also write the table into {DOC.relative_to(ROOT)}")
    parser.add_argument("--scheduler", metavar="tcp://HOST:8786", default=None,
                        help="run the pytest runs on the dask cluster of this scheduler; each "
                             "worker needs a checkout of the same commit (docs/SCALE.md)")
    parser.add_argument("--workers", type=positive_int, default=default_workers(), metavar="N",
                        help="without --scheduler: pytest runs at once, on a dask LocalCluster; "
                             "0 = one after another in this process (default: the cores, "
                             "%(default)s)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.mutants if m not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}; known: {', '.join(MUTANTS)}")
    names = args.mutants or list(MUTANTS)
    suites = {name: args.tests or LAYER_TESTS[MUTANTS[name].layer] for name in names}
    missing = sorted({p for paths in suites.values() for p in paths if not (ROOT / p).exists()})
    if missing:
        parser.error(f"no such test path: {', '.join(missing)}")
    broken = stale(names)  # only the mutants run must apply
    if broken:
        print("stale mutants (fix their snippets first):\n" + "\n".join(broken))
        return 1

    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    # One baseline per set of tests (the protocol layer runs the core suite in another order).
    distinct: list[tuple[str, ...]] = []
    for paths in suites.values():
        if not any(set(paths) == set(d) for d in distinct):
            distinct.append(tuple(paths))
    baselines: dict[frozenset[str], Outcome] = {}
    survivors = 0
    with executor(args.scheduler, args.workers, len(distinct) + len(names)) as where:
        print(f"{len(distinct)} baseline run(s), then {len(names)} mutant run(s), "
              f"{where.where}", file=sys.stderr)
        say("Baselines (no mutant; each must pass):")
        say()
        progress = Progress(len(distinct), "baselines")
        runs = [TestRun(None, paths, True, args.timeout) for paths in distinct]
        for i, outcome in in_order(where.map_unordered(run_unit, runs),
                                   lambda _, o: progress.advance(1, not o.passed)):
            baselines[frozenset(distinct[i])] = outcome
            verdict = "passed" if outcome.passed else f"FAILED: {outcome.by} ({outcome.why})"
            progress.note(f"- `{' '.join(distinct[i])}`: {verdict} in {outcome.seconds:.1f} s",
                          say)
        progress.close()
        say()
        green = {paths for paths, o in baselines.items() if o.passed}

        say("| mutant | bug | layer | killed | by | time |")
        say("|---|---|---|---|---|---|")
        # A mutant whose baseline failed is not run: its row says so, in its place in the table.
        runnable = [name for name in names if frozenset(suites[name]) in green]
        runs = [TestRun(name, tuple(suites[name]), not args.all_failures, args.timeout)
                for name in runnable]
        progress = Progress(len(runs), "mutants", counted="survived")
        outcomes = in_order(where.map_unordered(run_unit, runs),
                            lambda _, o: progress.advance(1, not o.failed))
        for name in names:
            mutant = MUTANTS[name]
            if name not in runnable:
                survivors += 1
                say(f"| {name} | {mutant.bug} | {mutant.layer} | not run | (its baseline failed) "
                    f"| - |")
                continue
            _, outcome = next(outcomes)
            survivors += not outcome.failed
            by = outcome.by + (f" (+{outcome.failures - 1} more)"
                               if args.all_failures and outcome.failures > 1 else "")
            progress.note(f"| {name} | {mutant.bug} | {mutant.layer} | "
                          f"{'yes' if outcome.failed else 'NO'} | {by} | {outcome.seconds:.1f} s |",
                          say)
        progress.close()
    failed_baselines = len(baselines) - len(green)
    say()
    say(f"{len(names) - survivors} of {len(names)} mutants killed"
        + (f"; {failed_baselines} baseline(s) failed" if failed_baselines else ""))
    if args.write:
        given = sys.argv[1:] if argv is None else argv
        write_doc("\n".join(lines), " ".join(["python -m properties.zoo", *given]))
    return 1 if survivors or failed_baselines else 0


def write_doc(table: str, command: str) -> None:
    """Put this run's table between the two marks in docs/MUTANTS.md (or at its end)."""
    write_section(MARK, f"Command: `{command}`\n\n{table}", DOC)


if __name__ == "__main__":
    sys.exit(main())
