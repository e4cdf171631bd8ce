"""The simulator: one seed replays one run byte for byte; the CLI says what is wrong with its input."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.trace import format_trace
from simulator.cli import main, parse_device, parse_duration
from simulator.engine import Simulation
from simulator.faults import FAULT_PRESETS
from simulator.workloads import WORKLOADS, make_workload

ROOT = Path(__file__).resolve().parent.parent


def trace_text(seed: int, workload: str = "zipf", faults: str = "heavy") -> str:
    w = make_workload(workload, 5, 2.0, long_service=10.0)
    config = RouterConfig(models=tuple(ModelSpec(n, stop_timeout=3.0) for n in w.model_names()),
                          models_max=2)
    result = Simulation(config, w, FAULT_PRESETS[faults], random.Random(seed),
                        duration=120.0).run()
    assert result.trace is not None
    return format_trace(result.trace)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_same_seed_gives_a_byte_identical_trace(workload: str) -> None:
    first, second = trace_text(11, workload), trace_text(11, workload)
    assert first.encode() == second.encode()
    assert len(first.splitlines()) > 100
    assert trace_text(12, workload) != first


def test_trace_lines_are_valid_python() -> None:
    from refimpl.core import commands, events
    from refimpl.core.trace import At
    namespace = {**vars(events), **vars(commands), "At": At}
    lines = trace_text(3).splitlines()
    for line in lines[:2000]:
        entry = eval(line, namespace)  # noqa: S307 - our own repr, the point of the test
        assert repr(entry) == line


def test_summary_counts_match_the_trace() -> None:
    w = make_workload("burst", 4, 1.0)
    config = RouterConfig(models=tuple(ModelSpec(n) for n in w.model_names()), models_max=1)
    result = Simulation(config, w, FAULT_PRESETS["none"], random.Random(5), duration=200.0).run()
    assert result.trace is not None
    s = result.summary
    spawns = sum(type(a.what).__name__ == "Spawn" for a in result.trace)
    arrivals = sum(type(a.what).__name__ == "RequestArrived" for a in result.trace)
    assert (s.loads, s.requests) == (spawns, arrivals)
    assert s.ok + sum(s.errors.values()) + s.gone + s.lost == s.requests
    assert s.lost == 0 and s.running_high == 1


def test_run_cli_prints_summary_and_replay_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--duration", "2m", "--seed", "4", "--faults", "light"]) == 0
    out = capsys.readouterr().out
    assert "guarantees      all held" in out
    assert "--seed 4" in out and "loads/served" in out


def test_run_cli_exit_status_1_on_a_violation(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--duration", "3m", "--workload", "streams", "--models", "3",
                 "--models-max", "1", "--policy", "naive-lru"])
    out = capsys.readouterr().out
    assert code == 1 and "busy_never_evicted" in out


def test_sweep_lists_failing_seeds_with_replay(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", "--seeds", "2", "--duration", "2m", "--workload", "streams",
                 "--models", "3", "--models-max", "1", "--mutant", "Z2"])
    out = capsys.readouterr().out
    assert code == 1 and "replay: python -m simulator run" in out and "--mutant Z2" in out


def test_plot_option_writes_an_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "t.svg"
    assert main(["run", "--duration", "1m", "--plot", str(target)]) == 0
    assert target.read_text().lstrip().startswith("<svg")


@pytest.mark.parametrize("args, message", [
    (["run", "--duration", "5x"], "is not a duration"),
    (["run", "--device", "gpu=lots"], "is not DEVICE=SIZE"),
    (["run", "--models", "-1"], "is negative"),
    (["run", "--rate", "0"], "must be more than 0"),
    (["run", "--mutant", "Z99"], "invalid choice"),
    (["run", "--workload", "nope"], "invalid choice"),
])
def test_bad_input_gets_a_clear_message_not_a_traceback(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "simulator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_parsers() -> None:
    assert parse_duration("24h") == 86400 and parse_duration("90") == 90
    assert parse_duration("1.5m") == 90
    assert parse_device("gpu0=2GiB") == ("gpu0", 2 * 1024**3)
