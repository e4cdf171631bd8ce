"""``python -m properties.mutation --again``: a saved run's unkilled mutants run again against
today's tests, on the same core only; mutmut itself is replaced here by what it would leave."""

from __future__ import annotations

from pathlib import Path

import pytest

from properties import mutation
from properties.mutation import Mutant, Run, Suite


def saved_run(core: str) -> Run:
    suite = Suite("properties", "The property suites alone", ["properties/"], "cmd")
    mutants = {n: Mutant(n, "refimpl/core/router.py", "f", status, "diff")
               for n, status in [("a", "killed"), ("b", "survived"), ("c", "survived"),
                                 ("d", "timeout"), ("e", "no tests")]}
    return Run(suite, 100.0, mutants, {"core": core, "started": "then", "code": "old"})


def test_again_reruns_only_what_was_not_killed_and_keeps_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mutation, "SAVED", tmp_path)
    mutation.save(saved_run(mutation.core_digest()))
    asked: list[list[str]] = []

    def fake_mutmut(selection: list[str], max_children: int, only: list[str]) -> float:
        asked.append(only)
        return 5.0

    monkeypatch.setattr(mutation, "run_mutmut", fake_mutmut)
    monkeypatch.setattr(mutation, "collect", lambda: {
        "a": Mutant("a", "x", "f", "not checked"), "b": Mutant("b", "x", "f", "killed"),
        "c": Mutant("c", "x", "f", "survived", "diff"),
        "e": Mutant("e", "x", "f", "not checked")})
    run = mutation.run_again(saved_run("x").suite, "properties", 2)
    assert asked == [["b", "c", "e"]]
    assert {n: m.status for n, m in run.mutants.items()} == {
        "a": "killed", "b": "killed", "c": "survived", "d": "timeout", "e": "no tests"}
    assert run.seconds == 105.0 and "3 mutants it did not kill" in run.versions["again"]
    assert mutation.load("properties") is not None
    assert mutation.load("properties").mutants["b"].status == "killed"  # type: ignore[union-attr]
    assert "(`--again`)" in mutation.run_section(run, {}, {})


def test_again_refuses_a_run_of_another_core(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mutation, "SAVED", tmp_path)
    mutation.save(saved_run("not-this-core"))
    with pytest.raises(SystemExit, match="run it whole"):
        mutation.run_again(saved_run("x").suite, "properties", 2)
