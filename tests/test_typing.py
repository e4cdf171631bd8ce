"""``mypy --strict`` on the core, the router, the child and the simulator, as part of the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_core_and_simulator_are_mypy_strict_clean() -> None:
    if shutil.which("mypy") is None and subprocess.run(
            [sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode != 0:
        pytest.fail("mypy is not installed: install the dev extras (pip install -e '.[dev]')")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "refimpl/core", "refimpl/router",
                           "refimpl/child", "simulator"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
