"""The wheel: one top-level package, ``llama_router_harness``, whose code names no part of the
checkout bare (``scripts/build_backend.py``), and the conformance suite runnable from it.

The staged tree is checked with the checkout's top-level names made unimportable in every process
(a ``sitecustomize`` on ``PYTHONPATH`` that refuses them, inherited by the router and its
children): a name the rewrite missed fails there, where the checkout would otherwise answer it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_backend", ROOT / "scripts" / "build_backend.py")
assert spec is not None and spec.loader is not None
backend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backend)

BLOCKER = """\
import sys

PARTS = {parts!r}


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in PARTS:
            raise ImportError(f"{{name}}: a checkout name, not the wheel's")
        return None


sys.meta_path.insert(0, Refuse())
"""


def test_rewrite_names_every_part_under_the_package() -> None:
    text = "\n".join([
        "from refimpl.core import errors",
        "    from fixtures import procs",
        "import refimpl.core.commands as commands",
        'cmd = [sys.executable, "-m", "refimpl", "--port"]',
        'child = f"{sys.executable} -m fixtures.fake_child --fault-seconds 3"',
        'pytest_plugins = ["fixtures.pytest_fixtures"]',
        'code = "from simulator.whole import *"',
        'COLUMNS = ("refimpl", "llama-server")',  # a report's column, not a module
        "from refimpl_extra import x",  # not a part
    ])
    assert backend.rewrite(text).splitlines() == [
        "from llama_router_harness.refimpl.core import errors",
        "    from llama_router_harness.fixtures import procs",
        "import llama_router_harness.refimpl.core.commands as commands",
        'cmd = [sys.executable, "-m", "llama_router_harness.refimpl", "--port"]',
        'child = f"{sys.executable} -m llama_router_harness.fixtures.fake_child '
        '--fault-seconds 3"',
        'pytest_plugins = ["llama_router_harness.fixtures.pytest_fixtures"]',
        'code = "from llama_router_harness.simulator.whole import *"',
        'COLUMNS = ("refimpl", "llama-server")',
        "from refimpl_extra import x",
    ]


def test_a_bare_import_of_a_part_stops_the_build(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "checkout"
    for part in backend.PARTS:
        (fake / part).mkdir(parents=True)
        (fake / part / "__init__.py").write_text("")
    (fake / "refimpl" / "bad.py").write_text("import refimpl\n")
    (fake / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (fake / "README.md").write_text("")
    monkeypatch.setattr(backend, "ROOT", fake)
    with pytest.raises(backend.BuildError, match=r"refimpl/bad.py: `import refimpl`"):
        backend.stage(tmp_path / "stage")


def test_the_wheel_has_one_top_level_package_and_its_entry_points(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    [wheel] = tmp_path.glob("llama_router_harness-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = z.read(info).decode()
        top = z.read(info.replace("entry_points.txt", "top_level.txt")).decode().split()
    assert top == ["llama_router_harness"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} \
        == {"llama_router_harness"}
    for part in backend.PARTS:
        assert f"llama_router_harness/{part}/__init__.py" in names
    assert "llama_router_harness/refimpl/llama_flags.json" in names
    assert "llama_router_harness/conformance/wire_llama_server.json" in names
    assert not any("/repros/" in n for n in names)
    assert "llama-router-conformance = llama_router_harness.conformance.cli:main" \
        in entry_points
    assert "[pytest11]\nllama_router_harness.conformance.plugin = " \
        "llama_router_harness.conformance.plugin" in entry_points


@pytest.mark.live
@pytest.mark.slow
def test_the_suite_runs_from_the_staged_package_alone(tmp_path: Path) -> None:
    """A conformance test (the reference router, a request routed by its body's model to a real
    child the router starts or forks) from the wheel's tree, every process refusing the
    checkout's names; the report lands in the folder given."""
    tree = backend.stage(tmp_path / "stage")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(parts=backend.PARTS))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{tree}"}
    reports = tmp_path / "reports"
    # (the console script's module; the plugin by hand: here the installed entry point is the
    # checkout's, whose names are refused)
    run = subprocess.run(
        [sys.executable, "-m", "llama_router_harness.conformance.cli", "--reports",
         str(reports), "--", "-p", "no:conformance.plugin", "-p",
         "llama_router_harness.conformance.plugin", "-q", "-k", "test_post_routes_by_body_model"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "error" not in run.stdout.lower()
    report = (reports / "conformance-refimpl.md").read_text()
    assert "| failed |" not in report and "| passed |" in report
    assert 'classname="conformance/test_api.py" name="test_post_routes_by_body_model"' in \
        (reports / "conformance-refimpl.xml").read_text()


def test_the_console_script_refuses_a_router_binary_that_is_not_there(
        capsys: pytest.CaptureFixture[str]) -> None:
    from conformance.cli import main
    with pytest.raises(SystemExit) as stop:
        main(["--router-bin", "/nonexistent/llama-server"])
    assert stop.value.code == 2
    assert "--router-bin /nonexistent/llama-server: no executable file there" in \
        capsys.readouterr().err
