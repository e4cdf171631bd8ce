"""The differential tool (``python -m conformance.differential``): its normalization and its
side-by-side report on data, then two live runs on fake children: a router against itself is the
same, and against a bug-zoo mutant it is not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conformance.differential import (SCENARIOS, Run, Scenario, Step, compare, main,
                                      normalize_transitions, outcome, side_by_side, write_doc)


def sse(model: str, **data: Any) -> tuple[float, dict[str, Any]]:
    return (0.0, {"model": model, "event": "status_change", "data": data})


def test_transitions_drop_repeats_and_mark_failures() -> None:
    items = [sse("a", status="loading"), sse("a", status="loading", progress={"value": 0.5}),
             sse("a", status="loaded"), sse("b", status="loading"),
             sse("b", status="unloaded", exit_code=1),  # llama-server: no "failed" flag
             sse("a", status="unloaded", exit_code=0), sse("a", status="loading"),
             sse("a", status="unloaded", exit_code=-9, failed=False),  # the flag wins
             (0.0, {"model": "*", "event": "models_reload", "data": {}})]
    assert normalize_transitions(items) == {
        "a": ["loading", "loaded", "unloaded", "loading", "unloaded"],
        "b": ["loading", "unloaded (failed)"]}


def test_outcomes_are_normalized() -> None:
    assert outcome(200, "{}") == "ok"
    assert outcome(200, "data: {}\n\ndata: [DONE]\n\n", stream=True) == "ok"
    assert outcome(200, "data: {}\n\n", stream=True) == "cut"
    assert outcome(404, "") == "404"
    assert outcome(502, "") == outcome(500, "") == "5xx"
    assert outcome(599, "connection reset") == "no answer"


def test_side_by_side_aligns_and_marks_differences() -> None:
    rows, same = side_by_side(["loaded", "sleeping", "loaded"],
                              ["loaded", "sleeping", "loading", "loaded"], 10)
    assert not same
    assert rows == ["    loaded     | loaded", "    sleeping   | sleeping",
                    "  !            | loading", "    loaded     | loaded"]
    assert side_by_side(["a"], ["a"], 4) == (["    a    | a"], True)


def test_compare_reports_status_and_outcome_differences() -> None:
    scenario = Scenario("s", (Step("request", "m", sync=True), Step("unload", "m")))
    left = Run("refimpl", {"m": ["loading", "loaded", "unloaded"]},
               {" 1 request m": "ok", " 2 unload m": "ok"})
    right = Run("llama-server", {"m": ["loading", "loaded", "unloaded (failed)"]},
                {" 1 request m": "ok", " 2 unload m": "ok"})
    text, same = compare(scenario, left, right)
    assert not same and "DIFFERENT" in text
    assert "  ! unloaded" in text and "| unloaded (failed)" in text
    assert compare(scenario, left, left)[1]


def test_scenario_files_parse_and_bad_steps_are_refused() -> None:
    parsed = Scenario.parse({"name": "x", "router_args": ["--models-max", "1"], "steps": [
        {"do": "request", "model": "tiny-xs", "stream": True},
        {"at": 1.5, "do": "wait", "model": "tiny-xs", "status": "loaded"}]})
    assert parsed.steps[0].sync is False and parsed.steps[0].option("stream", False) is True
    assert parsed.steps[1].sync is True and parsed.steps[1].at == 1.5
    with pytest.raises(ValueError):
        Step.parse({"do": "explode", "model": "m"})
    with pytest.raises(ValueError):
        Step.parse({"do": "load"})


def test_the_doc_block_is_added_then_replaced(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nprose\n")
    write_doc(doc, "refimpl | llama-server", "first run")
    write_doc(doc, "refimpl | llama-server", "second run")
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose\n") and "first run" not in text
    assert text.count("second run") == 1
    assert "$ python -m conformance.differential --left refimpl --right llama-server" in text


def test_builtin_scenarios_only_use_known_steps() -> None:
    for scenario in SCENARIOS.values():
        assert scenario.steps and scenario.about


@pytest.mark.live
def test_a_router_against_itself_is_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["swap", "--left", "fake", "--right", "fake"]) == 0
    out = capsys.readouterr().out
    assert "== swap" in out and "1 of 1 scenarios the same" in out


@pytest.mark.live
def test_a_mutant_shows_up_side_by_side(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    """Z18 reports an unload the router asked for as failed when the child had to be killed:
    the statuses differ."""
    scenario = tmp_path / "unload.json"
    scenario.write_text(json.dumps({"name": "unload", "router_args": ["--stop-timeout", "1"],
                                    "steps": [
        {"do": "request", "model": "tiny-xs", "sync": True},
        {"do": "freeze", "model": "tiny-xs"},
        {"do": "unload", "model": "tiny-xs"},
        {"do": "wait", "model": "tiny-xs", "status": "unloaded"}]}))
    assert main(["--file", str(scenario), "--left", "fake", "--right", "fake+Z18"]) == 1
    out = capsys.readouterr().out
    assert "tiny-xs: statuses  <-- differ" in out
    assert "! unloaded" in out and "| unloaded (failed)" in out, out
