"""bench/suite_cores.py: the suite's time on more workers, replayed from a junit report."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench import suite_cores

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_one" time="4.0"/>
<testcase classname="tests.test_a" name="test_two[x]" time="3.0"/>
<testcase classname="tests.test_s" name="test_found@search-found" time="2.5"/>
<testcase classname="tests.test_s" name="test_shrunk@search-found" time="2.5"/>
</testsuite></testsuites>
"""


def test_a_groups_tests_are_one_unit(tmp_path: Path) -> None:
    junit = tmp_path / "suite.xml"
    junit.write_text(REPORT)
    tests, units = suite_cores.units(junit)
    assert tests == 4
    assert units == {"tests.test_a::test_one": 4.0, "tests.test_a::test_two[x]": 3.0,
                     "@search-found": 5.0}


def test_the_replay_hands_each_unit_to_the_first_free_worker() -> None:
    rng = random.Random(0)
    assert suite_cores.makespan([4.0, 3.0, 5.0], 1, 1.0, rng) == 13.0
    # 3 workers: one unit each, the longest decides
    assert suite_cores.makespan([4.0, 3.0, 5.0], 3, 1.0, rng) == 6.0
    # 2 workers: whatever the order, the last unit goes to the one free first
    assert all(suite_cores.makespan([4.0, 3.0, 5.0], 2, 0.0, rng) in (7.0, 8.0, 9.0)
               for _ in range(20))


def test_figures_per_worker_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "suite.xml"
    junit.write_text(REPORT)
    assert suite_cores.main([str(junit), "--workers", "1", "3", "--start", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 tests, 12 s of test time, the longest unit 5.0 s (@search-found)" in out
    assert "  1 worker(s): 13 s" in out and "  3 worker(s): 6 s" in out


@pytest.mark.parametrize("content, args, said", [
    ("<testsuites><testcase", [], "is not XML"),
    ('<testsuites><testcase name="t" time="soon"/></testsuites>', [], "has the time 'soon'"),
    ("<testsuites></testsuites>", [], "holds no test"),
    (REPORT, ["--workers", "0"], "'0' is not a whole number of 1 or more"),
    (REPORT, ["--start", "-1"], "must be 0 or more"),
])
def test_bad_input_is_refused_with_what_was_wrong(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  content: str, args: list[str],
                                                  said: str) -> None:
    junit = tmp_path / "suite.xml"
    junit.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        suite_cores.main([str(junit), *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err, err


def test_a_missing_report_says_how_to_make_it(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        suite_cores.main([str(tmp_path / "none.xml")])
    assert "--junitxml=" in capsys.readouterr().err
