"""``gguf_complete``: a GGUF file whose tensors all end within it is whole; one cut short (a
download stopped half-way) is not, though its metadata reads. The router names a whole one in the
example curl it prints at start-up (``example_model``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fixtures.tiny_models import build_models_dir, default_cache_dir
from refimpl.router.main import example_model
from refimpl.router.memory import gguf_complete, gguf_metadata
from refimpl.router.sources import load_sources


def test_whole_files_are_complete_and_cut_ones_are_not(tmp_path: Path) -> None:
    tiny = build_models_dir(default_cache_dir())
    whole = tiny["tiny-xs"].path
    assert gguf_complete(whole)
    cut = tmp_path / "cut.gguf"
    data = whole.read_bytes()
    cut.write_bytes(data[:-1])  # one byte short of the last tensor's end
    assert gguf_metadata(cut) and not gguf_complete(cut)
    cut.write_bytes(data[:100])  # inside the header
    assert not gguf_complete(cut)
    cut.write_bytes(b"not a gguf file")
    assert not gguf_complete(cut)
    assert not gguf_complete(tiny["corrupt"].path)  # the fixture cut half-way


def test_the_example_model_is_a_whole_one(tmp_path: Path) -> None:
    tiny = build_models_dir(default_cache_dir())
    shutil.copy(tiny["tiny-xs"].path, tmp_path / "whole.gguf")
    shutil.copy(tiny["corrupt"].path, tmp_path / "a-smaller-cut-one.gguf")
    entries = {e.name: e for e in load_sources(str(tmp_path), None, [], tmp_path / "cache")}
    assert example_model(entries) == "whole"
