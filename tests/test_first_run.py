"""What a newcomer meets first: the model the printed curl names, the tiny models' training
context, and ``python -m refimpl.core``'s help and output. The run itself, Ctrl-C included, is
``tests/test_readme_run.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.tiny_models import build_models_dir, default_cache_dir
from refimpl.child.cli import parse_options
from refimpl.core.__main__ import main as core_main
from refimpl.core.lifecycle import mermaid_diagram
from refimpl.router.main import example_model
from refimpl.router.sources import load_sources

ROOT = Path(__file__).resolve().parent.parent


def test_the_curl_names_a_plain_one_file_model(tmp_path: Path) -> None:
    """tiny-vision is as small as tiny-xs and comes first by name, but its load reads a
    projector too; the sharded model reads two files."""
    tiny = build_models_dir(default_cache_dir())
    entries = {e.name: e for e in load_sources(str(tiny.root), None, [], tmp_path / "cache")}
    assert entries["tiny-vision"].mmproj is not None
    assert tiny["tiny-vision"].path.stat().st_size == tiny["tiny-xs"].path.stat().st_size
    assert example_model(entries) == "tiny-xs"
    del entries["tiny-xs"]
    assert example_model(entries) == "tiny-s"  # plain, before the smaller vision model
    assert example_model({"tiny-vision": entries["tiny-vision"]}) == "tiny-vision"


def test_every_tiny_model_is_trained_for_the_childs_default_context() -> None:
    """llama.cpp warns "n_ctx_seq (N) > n_ctx_train (M)" on each load of a model given more
    context than it was trained for."""
    default_ctx = parse_options(["-m", "x.gguf"], env={}).ctx_size
    tiny = build_models_dir(default_cache_dir())
    assert {entry.name: entry.spec.n_ctx_train >= default_ctx for entry in tiny.models} == {
        entry.name: True for entry in tiny.models}


def test_refimpl_core_help_says_what_it_prints(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        core_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m refimpl.core")
    assert "Mermaid" in out and "docs/LIFECYCLE.md" in out and "stateDiagram" not in out


def test_refimpl_core_prints_or_writes_the_diagram(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert core_main([]) == 0
    printed = capsys.readouterr().out
    assert printed == f"```mermaid\n{mermaid_diagram()}\n```\n"
    assert printed in (ROOT / "docs" / "LIFECYCLE.md").read_text()
    target = tmp_path / "lifecycle.md"
    assert core_main(["-o", str(target)]) == 0
    assert target.read_text() == printed
    assert capsys.readouterr().out == ""


def test_refimpl_core_cannot_write_says_why(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        core_main(["-o", str(tmp_path / "no" / "such" / "dir.md")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "No such file or directory" in err


def test_python_m_refimpl_help_names_the_command_it_was_run_by() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "refimpl", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m refimpl "), done.stdout[:200]
