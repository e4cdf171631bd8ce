"""``python -m properties.zoo``: run the test suite against every bug-zoo mutant.

For each mutant the unchanged suite runs in a fresh pytest process with ``ROUTER_MUTANT`` set
(``conftest.py`` turns it on in every core). A mutant is *killed* when the suite fails; the table
names the first failing test and the time the suite took to fail. The correct core runs first and
must pass: a suite that fails without any mutant kills nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from refimpl.core.mutants import MUTANTS

# The scenario tests run first: they are quick and name the bug they replay. Files are listed one by
# one because pytest regroups a file with the folder around it when both are named.
FIRST = "tests/test_bugzoo.py"


def suite() -> list[str]:
    rest = sorted(str(p) for p in Path("tests").glob("test_*.py") if str(p) != FIRST)
    return [FIRST, "properties", *rest]
FAILED = re.compile(r"^FAILED (\S+)", re.MULTILINE)


@dataclass
class Outcome:
    mutant: str
    killed: bool
    by: str
    seconds: float
    failures: int


def run_suite(mutant: str, *, first_only: bool, timeout: float, paths: list[str]) -> Outcome:
    env = dict(os.environ, ROUTER_MUTANT=mutant)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
           "--hypothesis-profile", "ci", *(["-x"] if first_only else []), *paths]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome(mutant, False, f"(suite still running after {timeout:g} s)",
                       time.perf_counter() - started, 0)
    seconds = time.perf_counter() - started
    failed = FAILED.findall(proc.stdout)
    if proc.returncode == 0:
        return Outcome(mutant, False, "-", seconds, 0)
    if not failed:  # an error outside any test: show pytest's last words
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["pytest failed"]
        return Outcome(mutant, True, f"(suite error) {tail[0]}", seconds, 0)
    return Outcome(mutant, True, failed[0], seconds, len(failed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m properties.zoo",
        description="Run the test suite against every bug-zoo mutant and print which test kills "
                    "each one. Exit status 1 if a mutant survives or the correct core fails.")
    parser.add_argument("mutants", nargs="*", metavar="ZN",
                        help=f"mutants to run (default: all: {', '.join(MUTANTS)})")
    parser.add_argument("--all-failures", action="store_true",
                        help="run the whole suite for each mutant and count every failing test "
                             "(slower; the default stops at the first)")
    parser.add_argument("--tests", nargs="+", metavar="PATH", default=None,
                        help="run only these test files or folders (default: the whole suite, "
                             "scenario tests first), e.g. properties/test_stateful.py to see what "
                             "the state machine kills on its own")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed per suite run (default: %(default)s)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.mutants if m not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}; known: {', '.join(MUTANTS)}")
    names = args.mutants or list(MUTANTS)
    paths = args.tests or suite()
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        parser.error(f"no such test path: {', '.join(missing)}")

    print("correct core: running the suite with no mutant ...", flush=True)
    baseline = run_suite("", first_only=True, timeout=args.timeout, paths=paths)
    if baseline.killed:
        print(f"the suite fails on the correct core ({baseline.by}); fix that first")
        return 1
    print(f"correct core: suite passed in {baseline.seconds:.1f} s ({' '.join(paths)})\n")

    print("| mutant | bug | killed | by | time to kill |")
    print("|---|---|---|---|---|")
    survivors = 0
    for name in names:
        outcome = run_suite(name, first_only=not args.all_failures, timeout=args.timeout,
                            paths=paths)
        survivors += not outcome.killed
        by = outcome.by + (f" (+{outcome.failures - 1} more)"
                           if args.all_failures and outcome.failures > 1 else "")
        print(f"| {name} | {MUTANTS[name]} | {'yes' if outcome.killed else 'NO'} | {by} | "
              f"{outcome.seconds:.1f} s |", flush=True)
    print(f"\n{len(names) - survivors} of {len(names)} mutants killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
