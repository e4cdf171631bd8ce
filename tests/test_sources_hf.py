"""A preset section whose ``hf-repo`` the cache does not hold, as llama-server's router takes it
(server-models.cpp ``load_models``: every preset section is listed, ``update_caps`` resolves the
file offline and only warns when it cannot; ``load`` hands the child its flags, and the child
fetches the repo as it loads, common/arg.cpp). No process, no port: ``load_sources`` over files
in a temporary folder; the fetch itself is checked live (conformance/test_downloads.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from refimpl.router.sources import SourceError, card_of, load_sources

from test_catalog_upstream import _cache


def _load(tmp_path: Path, preset: str, cache: Path | None = None) -> dict[str, list[str]]:
    path = tmp_path / "models.ini"
    path.write_text(preset)
    return {e.name: e.args() for e in load_sources(None, str(path), ["-c", "256"],
                                                   cache or tmp_path / "empty-cache")}


@pytest.mark.parametrize("key, file_key", [("hf-repo", "hf-file"), ("hf", "hff"),
                                           ("LLAMA_ARG_HF_REPO", "LLAMA_ARG_HF_FILE")])
def test_a_repo_the_cache_does_not_hold_is_listed_and_handed_to_its_child(
        tmp_path: Path, key: str, file_key: str) -> None:
    """Listed, with no file, its child given the repo (and the file, when named) to fetch."""
    path = tmp_path / "models.ini"
    path.write_text(f"[absent]\n{key} = tiny/absent-GGUF:F16\n\n"
                    f"[by-file]\n{key} = tiny/absent-GGUF\n{file_key} = absent-F16.gguf\n")
    entries = {e.name: e for e in load_sources(None, str(path), ["-c", "256"],
                                               tmp_path / "empty-cache")}
    assert entries["absent"].path is None and entries["absent"].source == "preset"
    assert entries["absent"].args() == ["--hf-repo", "tiny/absent-GGUF:F16", "--ctx-size", "256"]
    assert entries["by-file"].args() == ["--hf-repo", "tiny/absent-GGUF",
                                         "--hf-file", "absent-F16.gguf", "--ctx-size", "256"]
    assert card_of(entries["absent"]).path is None


def test_a_repo_the_cache_holds_is_its_file_and_not_handed_on(tmp_path: Path) -> None:
    """The same section, its repo in the cache: the file, the repo flags resolved away."""
    cache = tmp_path / "cache"
    snapshot = _cache(cache, "tiny/absent-GGUF", {"absent-F16.gguf": b"GGUF f16"})
    path = tmp_path / "models.ini"
    path.write_text("[absent]\nhf-repo = tiny/absent-GGUF:F16\n")
    [entry] = [e for e in load_sources(None, str(path), [], cache) if e.name == "absent"]
    assert entry.path == snapshot / "absent-F16.gguf" and entry.args() == []


@pytest.mark.parametrize("preset, why", [
    ("[none]\nctx-size = 256\n", r"\[none\] names no model file"),
    ("[bad]\nhf-repo = ../etc/passwd\n", r"\[bad\] hf-repo: .*not a hub name"),
])
def test_a_section_with_no_model_or_no_hub_name_is_still_refused(
        tmp_path: Path, preset: str, why: str) -> None:
    with pytest.raises(SourceError, match=why):
        _load(tmp_path, preset)
