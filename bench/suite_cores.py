"""What the README's test command would take on more cores: an estimate from one run's own times.

    python -m pytest -n auto --dist loadgroup --junitxml=out/suite.xml   # the run to estimate from
    python bench/suite_cores.py out/suite.xml                            # 1, 2, 4 and 8 workers
    python bench/suite_cores.py out/suite.xml --workers 4 --start 12.5

Only a machine with that many cores measures it; this one has 2. The estimate replays the run's
tests (their time in the junit report: setup, call and teardown) as pytest-xdist hands them out:
each worker takes the next test as it finishes one, in a shuffled order (pytest-randomly shuffles
the suite), and an ``xdist_group``'s tests (``--dist loadgroup``) run on one worker one after the
other. Each worker first starts and collects the suite (``--start`` seconds, measured here by
default: ``pytest --collect-only`` of the whole suite). The figure for the run's own worker count
is the check on the model: it should come out near the run's wall time. It leaves out what more
cores change inside a test (a test that starts a router and children uses more than one core, and
ran slower beside another on 2 cores), so it is an upper bound where tests were slowed by each
other and a lower bound where one test's parts would have run in parallel anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def durations(junit: Path) -> dict[str, float]:
    """Seconds per test id (``path::name``, as pytest names it) from a junit XML report."""
    out: dict[str, float] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        parts = classname.split(".")
        # classname "tests.test_x" or "tests.test_x.TestClass": the module is the longest prefix
        # that is a file
        for cut in range(len(parts), 0, -1):
            path = Path(*parts[:cut]).with_suffix(".py")
            if (ROOT / path).is_file():
                node = "::".join([str(path), *parts[cut:], name])
                out[node] = out.get(node, 0.0) + float(case.get("time", 0.0))
                break
    return out


class _Groups:
    """A pytest plugin that notes each collected test's ``xdist_group``."""

    def __init__(self) -> None:
        self.group: dict[str, str | None] = {}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            mark = item.get_closest_marker("xdist_group")
            name = None
            if mark is not None:
                name = mark.args[0] if mark.args else mark.kwargs.get("name")
            self.group[item.nodeid] = name


def groups() -> dict[str, str | None]:
    plugin = _Groups()
    os.chdir(ROOT)  # the suite the README's command runs: pyproject.toml's testpaths
    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main(["--collect-only", "-q", "-p", "no:randomly"], plugins=[plugin])
    if code not in (0, 5):
        sys.exit(f"suite_cores: collecting the suite failed (pytest exit {code})")
    return plugin.group


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
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--start", type=float, default=None,
                   help="seconds a worker takes to start and collect (measured by default)")
    p.add_argument("--orders", type=int, default=20, help="shuffled orders per figure (median)")
    args = p.parse_args(argv)
    if not args.junit.is_file():
        p.error(f"no such report: {args.junit} (run the suite with --junitxml={args.junit})")
    times = durations(args.junit)
    if not times:
        p.error(f"{args.junit} names no test of this checkout")
    group_of = groups()
    units: dict[str, float] = {}
    for node, seconds in times.items():
        key = group_of.get(node) or node
        units[key] = units.get(key, 0.0) + seconds
    start = collect_seconds() if args.start is None else args.start
    total = sum(units.values())
    print(f"{len(times)} tests, {total:.0f} s of test time, longest unit "
          f"{max(units.values()):.0f} s, a worker's start {start:.1f} s")
    rng = random.Random(0)
    for n in args.workers:
        spans = [makespan(list(units.values()), n, start, rng) for _ in range(args.orders)]
        print(f"  {n} worker(s): {statistics.median(spans):.0f} s "
              f"(from {min(spans):.0f} to {max(spans):.0f} s over {args.orders} orders)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
