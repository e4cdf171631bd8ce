"""How fast hypothesis finds and shrinks the thrash counterexample of each historical policy.

    python bench/find_thrash.py                  # naive-lru and drain-timeout, derandomized
    python bench/find_thrash.py --write          # ... and record the result in docs/BENCHMARKS.md
    git archive HEAD | tar -x -C /tmp/base       # (a tree to compare with: here, the last commit)
    python bench/find_thrash.py --baseline /tmp/base --write   # before/after in the same run

Each search is derandomized, so every repeat runs the same programs: the repeats only steady the
timing (the table gives their median). ``--baseline DIR`` measures the same searches with the
``properties`` (and the core) of another tree, in a child process, alternating with this one.
The default policy is run with the same settings as the baseline: it must find nothing, and the
time it takes to run out of examples is the yardstick for the search time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- find_thrash -->"
SEARCHES = [(policy, steps) for policy in ("naive-lru", "drain-timeout") for steps in (5, 10)]


def measure(policy: str, max_steps: int) -> dict[str, object]:
    """One search, in the tree on ``sys.path``: seconds to the first failure and to the shrunk
    one, and the shrunk program (``found`` None: no failure in the search's examples)."""
    import pytest
    from properties.test_stateful import find_counterexample, three_models
    try:
        notes, steps, found, shrunk = find_counterexample(three_models(1, policy=policy),
                                                          max_steps)
    except pytest.fail.Exception:  # "DID NOT RAISE": the search ran out of examples
        return {"found": None}
    program = notes.split("Explanation:")[0].strip()  # the explanation names this machine's files
    return {"found": found, "shrunk": shrunk, "steps": steps, "program": program}


def fifo_seconds() -> float:
    from hypothesis import settings
    from hypothesis.stateful import run_state_machine_as_test
    from properties.machine import router_machine
    from properties.test_stateful import three_models
    started = time.perf_counter()
    run_state_machine_as_test(router_machine(three_models(1)), settings=settings(
        max_examples=300, stateful_step_count=10, derandomize=True, database=None,
        deadline=None))
    return time.perf_counter() - started


def in_tree(tree: Path, what: list[str]) -> dict[str, object]:
    """``measure`` (or the fifo run) with ``tree``'s code, in a child process."""
    out = subprocess.run([sys.executable, __file__, "--tree", str(tree), "--one", *what],
                         check=True, capture_output=True, text=True)
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


def seconds(runs: list[dict[str, object]], key: str) -> str:
    values = [float(r[key]) for r in runs if r.get(key) is not None]  # type: ignore[arg-type]
    return f"{statistics.median(values):.1f} s" if values else "not found"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="record the table in docs/BENCHMARKS.md")
    p.add_argument("--repeats", type=int, default=3, help="runs of each search (median; 3)")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="a tree to measure the same way, before this one (e.g. from git archive)")
    p.add_argument("--tree", type=Path, help=argparse.SUPPRESS)  # the child process's tree
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # one search, printed as JSON
    a = p.parse_args()
    sys.path.insert(0, str(a.tree or ROOT))
    if a.one:
        policy, *rest = a.one
        print(json.dumps({"found": fifo_seconds()} if policy == "fifo"
                         else measure(policy, int(rest[0]))))
        return 0
    if a.repeats < 1:
        p.error("--repeats must be at least 1")
    if a.baseline is not None and not (a.baseline / "properties" / "test_stateful.py").exists():
        p.error(f"--baseline {a.baseline}: no properties/test_stateful.py there")
    trees = {"after": ROOT} if a.baseline is None else {"before": a.baseline, "after": ROOT}
    runs: dict[tuple[str, str], list[dict[str, object]]] = {}
    for policy, max_steps in [*SEARCHES, ("fifo", 0)]:
        for k in range(a.repeats):
            for label, tree in trees.items():
                print(f"{label}: {policy}, programs of at most {max_steps or 10} steps, "
                      f"run {k + 1} of {a.repeats} ...", flush=True)
                result = in_tree(tree, [policy, str(max_steps)])
                runs.setdefault((label, f"{policy} {max_steps}"), []).append(result)
                if result.get("program"):
                    print(result["program"], flush=True)
    rows = []
    programs = []
    before = "before: found and shrunk | " if a.baseline else ""
    for policy, max_steps in SEARCHES:
        now = runs[("after", f"{policy} {max_steps}")]
        then = (seconds(runs[("before", f"{policy} {max_steps}")], "shrunk") + " | "
                if a.baseline else "")
        last = now[-1]
        steps = last.get("steps", "-")
        rows.append(f"| {policy} | {max_steps} | {seconds(now, 'found')} | {then}"
                    f"{seconds(now, 'shrunk')} | {steps} |")
        if max_steps == 5 and last.get("program"):
            programs.append(f"{policy}:\n\n```\n{last['program']}\n```")
    fifo = {label: seconds(runs[(label, "fifo 0")], "found") for label in trees}
    then = f"{fifo['before']} | " if a.baseline else ""
    rows.append(f"| fifo (default) | 10 | nothing in 300 programs ({fifo['after']}) | {then}- | - |")
    table = "\n".join([f"| policy | steps at most | first failure | {before}found and shrunk | "
                       "shrunk program, steps |",
                       "|---|---|---|" + ("---|" if a.baseline else "") + "---|---|", *rows])
    import hypothesis
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(table)
    print(f"load average at the end: {load}")
    if a.write:
        from bench.report import write_section
        command = "python bench/find_thrash.py --write" + (
            " --baseline DIR" if a.baseline else "") + (
            f" --repeats {a.repeats}" if a.repeats != 3 else "")
        baseline = (f"; \"before\" is the tree in DIR, measured the same way in the same run, "
                    f"alternating" if a.baseline else "")
        section = (f"## Thrash counterexamples found by hypothesis\n\nCommand: `{command}` (one "
                   f"slot, three models, derandomized; wall seconds, median of {a.repeats} "
                   f"runs{baseline}; hypothesis {hypothesis.__version__}, pinned in the dev "
                   f"extras: another version searches and shrinks differently; "
                   f"{os.cpu_count()} cores, load average {load} at the end)\n\n{table}\n\n"
                   + "\n\n".join(programs))
        print(f"written to {write_section(MARK, section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
