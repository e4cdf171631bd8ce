"""The sweep and the bug zoo on dask: a real ``dask scheduler`` and two ``dask worker``
processes on loopback, and a ``LocalCluster``, each give the same output as a run in this
process; units reach only workers that run this checkout's code; results come back in order
wherever they ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from fixtures.procs import popen
from fixtures.services import LogLines, stop
from simulator import distributed
from simulator.cli import main

ROOT = Path(__file__).resolve().parent.parent
READY = 120.0  # seconds for a scheduler to listen, or for workers to register, on a busy machine
# Seeds of which some fail and some pass: a crash-while-loading mutant under heavy faults.
SWEEP = ["sweep", "--seeds", "30", "--batch", "4", "--duration", "2m", "--workload", "streams",
         "--models", "3", "--models-max", "1", "--faults", "heavy", "--mutant", "Z5"]


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a scheduler with two registered single-threaded workers, all three
    started with the standard commands and bound to 127.0.0.1 (the HTTP servers too)."""
    from distributed import Client

    scratch = tmp_path_factory.mktemp("dask")
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(popen([sys.executable, "-m", "dask", "scheduler", "--port", "0", *loopback],
                           cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True))
        address = LogLines(procs[0].stderr).wait_for(r"Scheduler at:\s+(tcp://127\.0\.0\.1:\d+)",
                                           READY).group(1)
        for name in ("w1", "w2"):
            procs.append(popen([sys.executable, "-m", "dask", "worker", address, "--name", name,
                                "--no-nanny", "--nthreads", "1", "--local-directory",
                                str(scratch), *loopback],
                               cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, text=True))
        with Client(address, timeout=READY) as client:  # type: ignore[no-untyped-call]
            client.wait_for_workers(2, timeout=READY)
        yield address
    finally:
        stop(procs)


def _sweep(capsys: pytest.CaptureFixture[str], *where: str) -> tuple[int, str, str]:
    code = main([*SWEEP, *where])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_a_sweep_on_a_loopback_cluster_matches_one_in_this_process(
        scheduler: str, capsys: pytest.CaptureFixture[str]) -> None:
    from distributed import Client

    local = _sweep(capsys, "--workers", "0")
    remote = _sweep(capsys, "--scheduler", scheduler)
    assert "in this process" in local[2] and f"on the scheduler at {scheduler}" in remote[2]
    # Same exit status, same failing seeds with the same replay commands, in the same order.
    assert remote[:2] == local[:2]
    failing = re.findall(r"^seed (\d+):", local[1], re.MULTILINE)
    assert local[0] == 1 and 0 < len(failing) < 30, local[1]
    assert local[1].count("replay: python -m simulator run") == len(failing)
    assert local[1].rstrip().endswith(f"30 seeds, {len(failing)} failing")
    # Both workers ran batches (8 batches of up to 4 seeds for 2 workers).
    with Client(scheduler, timeout=READY) as client:  # type: ignore[no-untyped-call]
        ran = client.run(lambda dask_worker: dask_worker.state.transition_counter)
    assert len(ran) == 2 and all(n > 0 for n in ran.values()), ran


@pytest.mark.slow
def test_the_bug_zoo_runs_its_pytest_runs_on_the_cluster(
        scheduler: str, capsys: pytest.CaptureFixture[str]) -> None:
    from properties import zoo

    code = zoo.main(["Z2", "--tests", "tests/test_bugzoo.py", "--scheduler", scheduler])
    out, err = capsys.readouterr()
    assert f"on the scheduler at {scheduler}" in err
    assert "- `tests/test_bugzoo.py`: passed in" in out
    row = re.search(r"^\| Z2 \| .* \| core \| (\w+) \| tests/test_bugzoo.py::", out, re.MULTILINE)
    assert row is not None and row.group(1) == "yes", out
    assert code == 0 and "1 of 1 mutants killed" in out


@pytest.mark.slow
def test_a_sweep_on_a_local_cluster_matches_one_in_this_process(
        capsys: pytest.CaptureFixture[str]) -> None:
    local = _sweep(capsys, "--workers", "0")
    cluster = _sweep(capsys, "--workers", "2")
    assert "on a LocalCluster of 2 worker(s)" in cluster[2]
    assert cluster[:2] == local[:2]
    assert "30/30 seeds" in cluster[2]  # the progress bar's last state


def test_a_short_sweep_runs_in_this_process(capsys: pytest.CaptureFixture[str]) -> None:
    # Without --workers, a first batch whose like would end the rest sooner here than a
    # LocalCluster starts keeps the sweep here (the decision, on chosen timings).
    from simulator.sweep import LOCAL_ENOUGH, stays_local
    assert stays_local(0.1, 7) and stays_local(LOCAL_ENOUGH / 8, 7)
    assert not stays_local(LOCAL_ENOUGH / 6, 7) and not stays_local(1.0, int(10 * LOCAL_ENOUGH))
    # One batch: nothing to share out, even with --workers.
    code, out, err = _sweep(capsys, "--seeds", "4", "--workers", "2")
    assert "in this process" in err and "4 seeds, " in out


def test_a_worker_with_other_code_refuses_the_unit() -> None:
    with pytest.raises(distributed.CodeMismatch, match="install the same version"):
        distributed._checked("0" * 64, len, "abc")
    assert distributed._checked(distributed.fingerprint(), len, "abc") == 3


def test_results_come_back_in_order_each_as_soon_as_it_can() -> None:
    arrived: list[int] = []
    pairs = [(2, "c"), (0, "a"), (3, "d"), (1, "b")]
    got = []
    for i, result in distributed.in_order(iter(pairs), lambda i, _: arrived.append(i)):
        got.append((i, result, len(arrived)))
    # 0 is yielded once it came (second); 1, 2 and 3 only once 1 came (fourth).
    assert got == [(0, "a", 2), (1, "b", 4), (2, "c", 4), (3, "d", 4)]
    assert arrived == [2, 0, 3, 1]
