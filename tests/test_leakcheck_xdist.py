"""The end-of-run leak check (fixtures/leakcheck.py) under the README's ``pytest -n auto
--dist loadgroup``: a process a test leaves behind in a pytest-xdist worker fails the whole
run, reported by the controller; a run that leaves nothing passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist")

LEAKING = '''
import subprocess, sys

def test_leaves_a_process_behind():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                     start_new_session=True)

def test_another():
    pass
'''

CLEAN = '''
def test_nothing_left():
    pass

def test_another():
    pass
'''


def run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["fixtures.leakcheck"]\n')
    (tmp_path / "test_it.py").write_text(body)
    return subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "xdist",
                           "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)


def test_a_leak_in_a_worker_fails_the_run(tmp_path: Path) -> None:
    out = run(tmp_path, LEAKING)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "leak check: 1 process(es) left; the run fails" in out.stdout, out.stdout
    assert "time.sleep(120)" in out.stdout


def test_a_clean_run_passes(tmp_path: Path) -> None:
    out = run(tmp_path, CLEAN)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "leak check" not in out.stdout
