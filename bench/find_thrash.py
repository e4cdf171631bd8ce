"""How fast hypothesis finds and shrinks the thrash counterexample of each historical policy.

    python bench/find_thrash.py            # naive-lru and drain-timeout, derandomized
    python bench/find_thrash.py --write    # ... and record the result in docs/BENCHMARKS.md

The default policy is run with the same settings as the baseline: it must find nothing, and the
time it takes to run out of examples is the yardstick for the search time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import write_section  # noqa: E402
import hypothesis  # noqa: E402
from hypothesis import settings  # noqa: E402
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402

from properties.machine import router_machine  # noqa: E402
from properties.test_stateful import find_counterexample, three_models  # noqa: E402

MARK = "<!-- find_thrash -->"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true")
    a = p.parse_args()
    rows = []
    programs = []
    for policy in ("naive-lru", "drain-timeout"):
        for max_steps in (5, 10):
            print(f"{policy}, programs of at most {max_steps} steps: searching ...", flush=True)
            notes, steps, found, shrunk = find_counterexample(three_models(1, policy=policy),
                                                              max_steps)
            rows.append(f"| {policy} | {max_steps} | {found:.1f} s | {shrunk:.1f} s | {steps} |")
            if max_steps == 5:  # hypothesis's "Explanation" names files of this machine
                program = notes.split("Explanation:")[0].strip()
                programs.append(f"{policy}:\n\n```\n{program}\n```")
            print(notes)
    print("fifo (default): the same search, which must find nothing ...", flush=True)
    started = time.perf_counter()
    run_state_machine_as_test(router_machine(three_models(1)), settings=settings(
        max_examples=300, stateful_step_count=10, derandomize=True, database=None,
        deadline=None))
    base = time.perf_counter() - started
    rows.append(f"| fifo (default) | 10 | nothing in 300 programs ({base:.1f} s) | - | - |")
    table = "\n".join(["| policy | steps at most | first failure | found and shrunk | shrunk "
                       "program, steps |", "|---|---|---|---|---|", *rows])
    print(table)
    if a.write:
        section = (f"## Thrash counterexamples found by hypothesis\n\nCommand: "
                   f"`python bench/find_thrash.py --write` (one slot, three models, derandomized; "
                   f"times are wall seconds; hypothesis {hypothesis.__version__}, pinned in the "
                   f"dev extras: another version searches and shrinks differently)\n\n{table}\n\n" + "\n\n".join(programs))
        print(f"written to {write_section(MARK, section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
