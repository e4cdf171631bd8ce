"""What the README's test command would take on more cores: an estimate from one run's own times.

    python -m pytest -n auto --dist loadgroup --junitxml=out/suite.xml   # the run to estimate from
    python bench/suite_cores.py out/suite.xml                            # 1, 2, 4 and 8 workers
    python bench/suite_cores.py out/suite.xml --workers 4 --start 12.5

Only a machine with that many cores measures it; this one has 2. The estimate replays the run's
tests (their time in the junit report: setup, call and teardown) as pytest-xdist hands them out:
each worker takes the next test as it finishes one, in a shuffled order (pytest-randomly shuffles
the suite), and an ``xdist_group``'s tests (``--dist loadgroup``, which names them
``test@group``) run on one worker one after the other. Each worker first starts and collects the
suite (``--start`` seconds, measured here by default: ``pytest --collect-only`` of the whole
suite). The figure for the run's own worker count is the check on the model: it should come out
near the run's wall time.

What it leaves out: a module- or session-scoped fixture is set up once per worker that runs a
test needing it, and the report counts it once (in the first test that used it on its worker),
so more workers pay some set-ups more often than the replay does; and a test that starts a router
and children uses more than one core, so it ran slower beside another test on 2 cores than it
would with a core to spare.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from refimpl.router.options import whole_number

ROOT = Path(__file__).resolve().parent.parent


def units(junit: Path) -> tuple[int, dict[str, float]]:
    """The number of tests in a junit XML report, and the seconds of each unit xdist hands out:
    a test, or an ``xdist_group``'s tests together. ``ValueError`` for a file that is not such a
    report."""
    try:
        root = ET.parse(junit).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{junit} is not XML: {exc}") from None
    tests = 0
    out: dict[str, float] = {}
    for case in root.iter("testcase"):
        name = case.get("name", "")
        try:
            seconds = float(case.get("time", "0"))
        except ValueError:
            raise ValueError(f"{junit}: test {name!r} has the time {case.get('time')!r}") \
                from None
        group = name.rpartition("@")[2] if "@" in name else ""
        key = f"@{group}" if group else f"{case.get('classname', '')}::{name}"
        out[key] = out.get(key, 0.0) + seconds
        tests += 1
    return tests, out


def makespan(units: list[float], workers: int, start: float, rng: random.Random) -> float:
    """Wall seconds for ``units`` handed out in a shuffled order to the first free worker."""
    order = units[:]
    rng.shuffle(order)
    free = [start] * workers
    for seconds in order:
        i = min(range(workers), key=free.__getitem__)
        free[i] += seconds
    return max(free)


def collect_seconds() -> float:
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly"],
                   cwd=ROOT, capture_output=True, check=False)
    return time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=(__doc__ or "").split("\n", 1)[1])
    p.add_argument("junit", type=Path, help="the run's junit XML report (--junitxml)")
    p.add_argument("--workers", type=whole_number(1), nargs="+", default=[1, 2, 4, 8],
                   help="worker counts to estimate (default: 1 2 4 8)")
    p.add_argument("--start", type=float, default=None,
                   help="seconds a worker takes to start and collect (measured by default)")
    p.add_argument("--orders", type=whole_number(1), default=20,
                   help="shuffled orders per figure, their median printed (default: 20)")
    args = p.parse_args(argv)
    if args.start is not None and not args.start >= 0:
        p.error(f"argument --start: must be 0 or more, not {args.start}")
    if not args.junit.is_file():
        p.error(f"no such report: {args.junit} (run the suite with --junitxml={args.junit})")
    try:
        tests, by_unit = units(args.junit)
    except ValueError as exc:
        p.error(str(exc))
    if not by_unit:
        p.error(f"{args.junit} holds no test")
    start = collect_seconds() if args.start is None else args.start
    longest = max(by_unit, key=by_unit.__getitem__)
    print(f"{tests} tests, {sum(by_unit.values()):.0f} s of test time, the longest unit "
          f"{by_unit[longest]:.1f} s ({longest}), a worker's start {start:.1f} s")
    rng = random.Random(0)
    for n in args.workers:
        spans = [makespan(list(by_unit.values()), n, start, rng) for _ in range(args.orders)]
        print(f"  {n} worker(s): {statistics.median(spans):.0f} s "
              f"(from {min(spans):.0f} to {max(spans):.0f} s over {args.orders} orders)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
