"""The catalog as llama-server's router builds it (server-models.cpp ``load_models``,
common/preset.cpp): a preset's model named by ``hf-repo``/``hf-file`` under any of their names,
``dedup-cache-models``, ``tags``, and the ``architecture`` read from the files
(server-common.cpp). No process, no port: ``load_sources`` over files in a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.tiny_models import ModelsDir
from refimpl import modalities
from refimpl.router.sources import ModelEntry, load_sources

COMMIT = "c" * 40


def _cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A hub-layout cache holding ``files`` of ``repo`` (plain files in the snapshot)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    _cache(root, "tiny/tiny-GGUF", {"tiny-Q8_0.gguf": b"GGUF q8", "tiny-F16.gguf": b"GGUF f16",
                                     "tiny-Q4_K_M.gguf": b"GGUF q4"})
    _cache(root, "tiny/draft-GGUF", {"draft-F16.gguf": b"GGUF draft"})
    _cache(root, "tiny/other-GGUF", {"other-F16.gguf": b"GGUF other"})
    return root


def _load(tmp_path: Path, cache: Path, preset: str, *router_args: str) -> dict[str, ModelEntry]:
    path = tmp_path / "models.ini"
    path.write_text(preset)
    return {e.name: e for e in load_sources(None, str(path), list(router_args), cache)}


@pytest.mark.parametrize("repo_key, file_key", [
    ("hf-repo", "hf-file"), ("hf", "hff"), ("hfr", "hff"),
    ("LLAMA_ARG_HF_REPO", "LLAMA_ARG_HF_FILE"), ("-hf", "--hf-file")])
def test_a_section_names_its_model_by_hf_repo_under_any_of_its_names(
        tmp_path: Path, cache: Path, repo_key: str, file_key: str) -> None:
    snapshot = cache / "models--tiny--tiny-GGUF" / "snapshots" / COMMIT
    entries = _load(tmp_path, cache,
                    f"[tagged]\n{repo_key} = tiny/tiny-GGUF:q8_0\n\n"
                    f"[untagged]\n{repo_key} = tiny/tiny-GGUF\n\n"
                    f"[by-file]\n{repo_key} = tiny/tiny-GGUF\n{file_key} = tiny-F16.gguf\n")
    assert entries["tagged"].path == snapshot / "tiny-Q8_0.gguf"
    assert entries["untagged"].path == snapshot / "tiny-Q4_K_M.gguf"  # llama.cpp's default
    assert entries["by-file"].path == snapshot / "tiny-F16.gguf"
    for name in ("tagged", "untagged", "by-file"):
        assert entries[name].source == "preset"
        # the child is given the file: the repo flags are resolved, not handed on
        assert not {"--hf-repo", "--hf-file", "-hf", "-hff"} & set(entries[name].args())


def test_dedup_cache_models_hides_the_cache_entries_of_a_sections_files(
        tmp_path: Path, cache: Path) -> None:
    section = ("[mine]\nhf-repo = tiny/tiny-GGUF:F16\nspec-draft-hf = tiny/draft-GGUF:F16\n")
    hidden = {n for n, e in _load(tmp_path, cache, section + "dedup-cache-models = 1\n").items()
              if e.hidden}
    assert hidden == {"tiny/tiny-GGUF:F16", "tiny/draft-GGUF:F16"}
    # off (or not said) lists them again; [*] says it for every section
    assert not any(e.hidden for e in _load(tmp_path, cache, section).values())
    assert not any(e.hidden for e in _load(
        tmp_path, cache, section + "dedup-cache-models = false\n").values())
    hidden = {n for n, e in _load(tmp_path, cache, "[*]\ndedup-cache-models = true\n\n"
                                  + section).items() if e.hidden}
    assert hidden == {"tiny/tiny-GGUF:F16", "tiny/draft-GGUF:F16"}
    # a hidden entry is still in the catalog (routed), only not listed
    entries = _load(tmp_path, cache, section + "dedup-cache-models = 1\n")
    assert {"tiny/tiny-GGUF:F16", "tiny/tiny-GGUF:Q8_0", "tiny/other-GGUF:F16"} <= set(entries)
    assert not entries["mine"].hidden and not entries["tiny/tiny-GGUF:Q8_0"].hidden


def test_tags_come_from_the_preset_and_the_router_command_line(
        tmp_path: Path, cache: Path) -> None:
    entries = _load(tmp_path, cache,
                    "[*]\ntags = everyone\n\n"
                    "[a]\nhf-repo = tiny/tiny-GGUF:F16\ntags = small, chat ,,fim\n\n"
                    "[b]\nhf-repo = tiny/other-GGUF:F16\n\n"
                    "[c]\nhf-repo = tiny/other-GGUF:F16\nLLAMA_ARG_TAGS = one\n")
    assert entries["a"].tags == ("chat", "fim", "small")  # a set, sorted, as upstream's
    assert entries["b"].tags == ("everyone",)
    assert entries["c"].tags == ("one",)
    assert entries["tiny/tiny-GGUF:Q8_0"].tags == ("everyone",)  # [*] is every model's
    entries = _load(tmp_path, cache, "[a]\nhf-repo = tiny/tiny-GGUF:F16\ntags = x\n",
                    "--tags", "cli")
    assert entries["a"].tags == ("cli",)  # the router's command line wins
    assert "--tags" in entries["a"].args()  # and the child is given it, as llama-server's is


def test_preset_keys_are_any_name_of_the_flag_or_its_variable(
        tmp_path: Path, cache: Path) -> None:
    entries = _load(tmp_path, cache,
                    "[a]\nhf-repo = tiny/tiny-GGUF:F16\nLLAMA_ARG_N_PARALLEL = 2\n"
                    "LLAMA_ARG_BATCH = 64\nngl = 0\nno-mmap = true\n")
    flags = entries["a"].flags
    assert flags["--parallel"] == "2" and flags["--batch-size"] == "64"
    assert flags["--n-gpu-layers"] == "0" and "--no-mmap" in flags


def test_architecture_is_read_from_the_model_and_its_projector(
        tiny_models: ModelsDir, tmp_path: Path) -> None:
    vision = tiny_models["tiny-vision"]
    assert modalities.architecture(vision.path, vision.mmproj) == {
        "input_modalities": ["text", "image"], "output_modalities": ["text"]}
    assert modalities.architecture(tiny_models["tiny-xs"].path, None) == {
        "input_modalities": ["text"], "output_modalities": ["text"]}
    # an unreadable file says no more than the defaults, as upstream's update_caps
    assert modalities.architecture(tmp_path / "absent.gguf", tmp_path / "absent-mmproj.gguf") \
        == modalities.text_only()
    assert modalities.from_metadata(
        {"general.architecture": "x", "x.decision.type": "lev"},
        {"clip.has_audio_encoder": True}) == {"input_modalities": ["text", "audio"],
                                              "output_modalities": ["decisions"]}


def test_a_loaded_childs_arrays_replace_the_files_whole_and_bad_ones_change_nothing() -> None:
    offline = {"input_modalities": ["text", "image"], "output_modalities": ["text"]}
    assert modalities.merged(offline, {"input_modalities": ["text", "image", "video"]}) == {
        "input_modalities": ["text", "image", "video"], "output_modalities": ["text"]}
    for bad in (None, "text", {"input_modalities": "text"},
                {"input_modalities": ["text", 3]}, {"output_modalities": None}):
        assert modalities.merged(offline, bad) == offline


def test_the_model_its_projector_and_its_aliases_are_read_under_any_of_their_names(
        tmp_path: Path, cache: Path) -> None:
    model, projector = tmp_path / "m.gguf", tmp_path / "mmproj-m.gguf"
    entries = _load(tmp_path, cache,
                    f"[a]\nLLAMA_ARG_MODEL = {model}\nLLAMA_ARG_MMPROJ = {projector}\n"
                    "LLAMA_ARG_ALIAS = first, second\n\n"
                    f"[b]\nm = {model}\nmm = {projector}\na = third\n")
    for name, aliases in (("a", ("first", "second")), ("b", ("third",))):
        assert entries[name].path == model and entries[name].mmproj == projector
        assert entries[name].aliases == aliases
        assert not {"--model", "--mmproj", "--alias"} & set(entries[name].flags)
