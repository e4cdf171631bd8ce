"""The policy comparison (bench/policies.py) on a tiny budget: one seed, two simulated minutes, A/B
and zipf under fifo and naive-lru. Its figures must agree with each run's own summary and trace."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence, TypeVar

import pytest

from bench.policies import (CASES, CONFIGURATIONS, DEVICE, GiB, Case, Comparison,
                            Configuration, Measure, Missing, compare, main, median, simulate,
                            with_field)
from refimpl.core.commands import Spawn
from refimpl.core.events import ChildExited
from simulator.summary import percentile

DURATION = 120.0
SEED = 0


T = TypeVar("T", Case, Configuration)


def pick(known: Sequence[T], *names: str) -> list[T]:
    return [k for k in known if k.name in names]


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    return compare(pick(CASES, "ab", "zipf"), pick(CONFIGURATIONS, "fifo", "naive-lru"), [SEED],
                   DURATION)


def cell(comparison: Comparison, case: str, configuration: str) -> Measure:
    [found] = [c for c in comparison.cells
               if c.case.name == case and c.configuration.name == configuration]
    return found.median


def test_every_cell_is_run(comparison: Comparison) -> None:
    assert [(c.case.name, c.configuration.name) for c in comparison.cells] == [
        ("ab", "fifo"), ("ab", "naive-lru"), ("zipf", "fifo"), ("zipf", "naive-lru")]
    assert not comparison.skipped


def test_figures_agree_with_the_runs_summary(comparison: Comparison) -> None:
    for c in comparison.cells:
        _, result = simulate(c.case, c.configuration, SEED, DURATION)
        s, m = result.summary, c.median
        assert s.ok > 0
        assert (m.requests, m.served, m.loads) == (s.requests, s.ok, s.loads)
        assert m.errors == sum(s.errors.values()) + s.lost
        assert m.loads_per_served == pytest.approx(s.loads / s.ok)
        assert m.wait_p50 == percentile(s.waits, 0.5)
        assert m.wait_p99 == percentile(s.waits, 0.99)
        assert 0.0 <= m.wait_p50 <= m.wait_p99 <= m.starvation


def test_memory_time_is_the_integral_of_the_children_alive(comparison: Comparison) -> None:
    """Read off the trace's own Spawn and ChildExited, not off the replay the bench uses."""
    for c in comparison.cells:
        config, result = simulate(c.case, c.configuration, SEED, DURATION, record=True)
        assert result.trace is not None
        need = {spec.name: spec.memory[DEVICE] for spec in config.models}
        spawned: dict[int, tuple[float, str]] = {}
        held = 0.0
        for at in result.trace:
            if isinstance(at.what, Spawn):
                spawned[at.what.instance] = (at.t, at.what.model)
            elif isinstance(at.what, ChildExited):
                t0, model = spawned.pop(at.what.instance)
                held += need[model] * max(0.0, min(at.t, DURATION) - min(t0, DURATION))
        for t0, model in spawned.values():  # alive at the end
            held += need[model] * max(0.0, DURATION - min(t0, DURATION))
        m = c.median
        assert m.memory_time == pytest.approx(held / GiB)
        # the budget holds at every instant, so it bounds the integral
        assert 0.0 < m.memory_time <= c.case.budget * DURATION


def test_naive_lru_thrashes_on_ab_and_fifo_does_not(comparison: Comparison) -> None:
    fifo, naive = cell(comparison, "ab", "fifo"), cell(comparison, "ab", "naive-lru")
    assert naive.loads_per_served > 1.0 > fifo.loads_per_served
    assert naive.errors > 0 == fifo.errors


def test_the_same_arrivals_for_every_configuration() -> None:
    ab = pick(CASES, "ab")[0]
    results = [simulate(ab, c, SEED, DURATION)[1] for c in pick(CONFIGURATIONS, "fifo",
                                                                 "naive-lru")]
    arrivals = [sorted((r.arrived, r.model) for r in res.summary.replay.requests.values())
                for res in results]
    assert arrivals[0] == arrivals[1] and arrivals[0]


def test_the_median_is_taken_figure_by_figure() -> None:
    fields = [f.name for f in dataclasses.fields(Measure)]
    runs = [Measure(**{f: float(i + k) for k, f in enumerate(fields)}) for i in (5, 1, 3)]
    assert median(runs) == Measure(**{f: float(3 + k) for k, f in enumerate(fields)})


def test_a_configuration_the_core_lacks_is_skipped_with_a_note() -> None:
    notes: list[str] = []
    future = Configuration("fifo+future", "fifo",
                           lambda config: with_field(config, ("no_such_field",), 1), "not yet")
    out = compare(pick(CASES, "ab"), [*pick(CONFIGURATIONS, "fifo"), future], [SEED], 30.0,
                  notes.append)
    assert [c.configuration.name for c in out.cells] == ["fifo"]
    assert "no_such_field" in out.skipped["fifo+future"]
    assert any(n.startswith("skipped fifo+future") for n in notes)
    with pytest.raises(Missing):
        with_field(pick(CASES, "ab")[0].workload, ("no_such_field",), 1)


def test_the_command_writes_its_document(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "POLICIES.md"
    assert main(["--workloads", "ab", "--configurations", "fifo,naive-lru", "--seeds", "1",
                 "--duration", "60s", "--write", "--doc", str(doc)]) == 0
    out = capsys.readouterr()
    assert "| naive-lru |" in out.out and "ab" in out.err
    text = doc.read_text()
    assert "python bench/policies.py --write --workloads ab" in text
    assert "| fifo |" in text and "| naive-lru |" in text
    for line in text.splitlines():  # a picture is linked only once drawn
        if line.startswith("!["):
            assert (doc.parent / line.split("](")[1].rstrip(")")).exists()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
