"""The tiny GGUF fixtures: deterministic bytes, the models-dir layout, and that llama.cpp loads them.

The llama.cpp checks run through llama-cpp-python and are skipped where it is not installed.
"""

from __future__ import annotations

import ctypes
import filecmp
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.images import png_data_uri, tiny_png
from fixtures.tiny_models import (
    CHATML_TEMPLATE,
    SIZES,
    ModelKind,
    ModelsDir,
    TinyModel,
    build_models_dir,
    default_cache_dir,
    write_corrupt,
    write_gguf,
    write_sharded_gguf,
)

gguf = pytest.importorskip("gguf")

MB = 1_000_000
LOADABLE = ("tiny-xs", "tiny-s", "tiny-m", "tiny-l", "tiny-vision", "tiny-sharded")


# --- bytes -------------------------------------------------------------------------------------

def test_same_spec_gives_the_same_bytes(tmp_path: Path) -> None:
    model = TinyModel.sized("tiny-xs", 1, "xs")
    a = write_gguf(model, tmp_path / "a.gguf")
    b = write_gguf(model, tmp_path / "b.gguf")
    assert a.read_bytes() == b.read_bytes()


def test_seed_changes_the_weights_only(tmp_path: Path) -> None:
    a = write_gguf(TinyModel.sized("m", 1, "xs"), tmp_path / "a.gguf")
    b = write_gguf(TinyModel.sized("m", 2, "xs"), tmp_path / "b.gguf")
    assert a.stat().st_size == b.stat().st_size
    assert a.read_bytes() != b.read_bytes()


def test_regenerated_dir_is_byte_identical(tiny_models: ModelsDir, tmp_path: Path) -> None:
    fresh = build_models_dir(tmp_path / "models")
    for old, new in zip(tiny_models.models, fresh.models, strict=True):
        assert old.name == new.name
        for a, b in zip(old.files, new.files, strict=True):
            assert filecmp.cmp(a, b, shallow=False), f"{a} differs from a fresh build"


def test_build_reuses_a_current_dir_and_repairs_a_damaged_one(tmp_path: Path) -> None:
    root = tmp_path / "models"
    first = build_models_dir(root)
    xs = first["tiny-xs"].path
    stamp = xs.stat().st_mtime_ns
    time.sleep(0.01)
    build_models_dir(root)
    assert xs.stat().st_mtime_ns == stamp, "a current dir was rewritten"

    os.truncate(xs, 100)
    (first["tiny-sharded"].files[1]).unlink()
    repaired = build_models_dir(root)
    assert repaired["tiny-xs"].size_bytes == first["tiny-xs"].size_bytes
    assert all(f.exists() for f in repaired["tiny-sharded"].files)
    assert not [p for p in root.iterdir() if p.name.startswith(".staging")]


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMA_ROUTER_FIXTURES", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("LLAMA_ROUTER_FIXTURES")
    assert default_cache_dir() == Path.home() / ".cache" / "llama-router-harness" / "models"


# --- sizes and layout --------------------------------------------------------------------------

def test_sizes_span_under_a_megabyte_to_tens_of_megabytes(tiny_models: ModelsDir) -> None:
    sizes = [tiny_models[f"tiny-{size}"].size_bytes for size in SIZES]
    assert list(SIZES) == ["xs", "s", "m", "l"]
    assert sizes[0] < 1 * MB
    assert sizes[-1] > 10 * MB
    assert sizes == sorted(set(sizes)), "sizes must strictly increase"


def test_layout_matches_the_models_dir_conventions(tiny_models: ModelsDir) -> None:
    root = tiny_models.root
    rel = {e.name: [f.relative_to(root).as_posix() for f in e.files] for e in tiny_models.models}
    assert rel == {
        "tiny-xs": ["tiny-xs.gguf"],
        "tiny-s": ["tiny-s.gguf"],
        "tiny-m": ["tiny-m.gguf"],
        "tiny-l": ["tiny-l.gguf"],
        "tiny-vision": ["tiny-vision/tiny-vision.gguf", "tiny-vision/mmproj-tiny-vision.gguf"],
        "tiny-sharded": ["tiny-sharded/tiny-sharded-00001-of-00002.gguf",
                         "tiny-sharded/tiny-sharded-00002-of-00002.gguf"],
        "corrupt": ["corrupt.gguf"],
    }
    # Single-file models are named by their file stem, as the router names them.
    for entry in tiny_models.of_kind(ModelKind.SINGLE):
        assert entry.path.stem == entry.name
    assert tiny_models["tiny-vision"].mmproj == root / "tiny-vision/mmproj-tiny-vision.gguf"
    assert tiny_models["tiny-sharded"].path.name.endswith("-00001-of-00002.gguf")
    # Nothing else that a router could mistake for a model.
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.gguf")) == sorted(
        f for files in rel.values() for f in files)


def _fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def test_metadata_is_a_real_llama_model(tiny_models: ModelsDir) -> None:
    fields = _fields(tiny_models["tiny-xs"].path)
    spec = tiny_models["tiny-xs"].spec
    assert fields["general.architecture"] == "llama"
    assert fields["llama.embedding_length"] == spec.n_embd
    assert fields["llama.block_count"] == spec.n_layer
    assert fields["llama.context_length"] == spec.n_ctx_train
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.chat_template"] == CHATML_TEMPLATE
    tokens = fields["tokenizer.ggml.tokens"]
    types = fields["tokenizer.ggml.token_type"]
    assert len(tokens) == spec.n_vocab
    assert tokens[fields["tokenizer.ggml.bos_token_id"]] == "<s>"
    assert tokens[fields["tokenizer.ggml.eos_token_id"]] == "</s>"
    assert [tokens[3], tokens[258]] == ["<0x00>", "<0xFF>"]
    assert set(types[3:259]) == {int(gguf.TokenType.BYTE)}
    for control in ("<|im_start|>", "<|im_end|>"):
        assert types[tokens.index(control)] == int(gguf.TokenType.CONTROL)


def test_shards_follow_the_split_conventions(tiny_models: ModelsDir) -> None:
    first, second = (_fields(p) for p in tiny_models["tiny-sharded"].files)
    n_tensors = tiny_models["tiny-sharded"].spec.n_tensors
    assert (first["split.no"], first["split.count"], first["split.tensors.count"]) == (0, 2, n_tensors)
    assert (second["split.no"], second["split.count"], second["split.tensors.count"]) == (1, 2, n_tensors)
    assert "tokenizer.ggml.tokens" in first and "tokenizer.ggml.tokens" not in second
    counts = [len(gguf.GGUFReader(p).tensors) for p in tiny_models["tiny-sharded"].files]
    assert sum(counts) == n_tensors and min(counts) > 0


def test_shard_count_is_exact(tmp_path: Path) -> None:
    model = TinyModel.sized("three", 5, "xs")   # 21 tensors
    paths = write_sharded_gguf(model, tmp_path, n_shards=3)
    assert [p.name for p in paths] == [f"three-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert all(p.exists() for p in paths)
    with pytest.raises(ValueError):
        write_sharded_gguf(model, tmp_path, n_shards=1)


def test_mmproj_is_a_clip_gguf(tiny_models: ModelsDir) -> None:
    mmproj = tiny_models["tiny-vision"].mmproj
    assert mmproj is not None
    fields = _fields(mmproj)
    assert fields["general.architecture"] == "clip"
    assert fields["clip.vision.projection_dim"] == tiny_models["tiny-vision"].spec.n_embd


def test_corrupt_file_starts_like_gguf_but_does_not_parse(tiny_models: ModelsDir) -> None:
    path = tiny_models["corrupt"].path
    assert path.read_bytes()[:4] == b"GGUF"
    with pytest.raises(Exception):
        gguf.GGUFReader(path)


def test_corrupt_is_half_a_model(tmp_path: Path) -> None:
    model = TinyModel.sized("c", 1, "xs")
    whole = write_gguf(model, tmp_path / "whole.gguf").stat().st_size
    assert write_corrupt(model, tmp_path / "c.gguf").stat().st_size == whole // 2


def test_tiny_png_is_a_deterministic_png() -> None:
    assert tiny_png(8, 4) == tiny_png(8, 4)
    assert tiny_png(8, 4)[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_data_uri(8, 4).startswith("data:image/png;base64,iVBORw0KGgo")


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        TinyModel("bad", 0, n_embd=60, n_layer=1, n_ff=64, n_ctx_train=64, n_head=8)


# --- llama.cpp (through llama-cpp-python) ------------------------------------------------------

@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def loaded(llama_cpp: Any, tiny_models: ModelsDir) -> Iterator[dict[str, Any]]:
    """Each loadable model, loaded once for the module."""
    models = {name: llama_cpp.Llama(model_path=str(tiny_models[name].path), n_ctx=64,
                                    verbose=False, seed=0)
              for name in LOADABLE}
    yield models
    for model in models.values():
        model.close()


@pytest.mark.parametrize("name", LOADABLE)
def test_model_loads_and_round_trips_text(loaded: dict[str, Any], tiny_models: ModelsDir,
                                          name: str) -> None:
    llm = loaded[name]
    assert llm.n_vocab() == tiny_models[name].spec.n_vocab
    assert llm.n_ctx() >= 64  # llama.cpp rounds the context up
    for text in (b"hello", b"hello world", "caf\u00e9 \u2603\n".encode()):
        tokens = llm.tokenize(text, add_bos=True)
        assert tokens[0] == llm.token_bos()
        assert llm.detokenize(tokens) == text
    # "hello" is one piece; the byte tokens only cover what the pieces do not.
    assert len(llm.tokenize(b"hello", add_bos=False)) == 1


@pytest.mark.parametrize("name", LOADABLE)
def test_model_completes_and_chats(loaded: dict[str, Any], name: str) -> None:
    llm = loaded[name]
    llm.reset()
    out = llm("hello", max_tokens=4, temperature=0.0)
    assert out["choices"][0]["finish_reason"] in ("length", "stop")
    assert isinstance(out["choices"][0]["text"], str)
    # llama-cpp-python found the chatml template in the metadata and formats with it.
    assert llm.chat_format == "chatml"
    chat = llm.create_chat_completion(
        messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0.0)
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["prompt_tokens"] > 4


def test_first_shard_loads_the_whole_model(llama_cpp: Any, loaded: dict[str, Any],
                                           tiny_models: ModelsDir) -> None:
    spec = tiny_models["tiny-sharded"].spec
    e, ff = spec.n_embd, spec.n_ff
    n_params = 2 * spec.n_vocab * e + e + spec.n_layer * (4 * e * e + 3 * e * ff + 2 * e)
    assert llama_cpp.llama_model_n_params(loaded["tiny-sharded"].model) == n_params
    assert llama_cpp.llama_model_n_params(loaded["tiny-s"].model) == n_params


def test_llama_cpp_recognises_chatml_without_jinja(llama_cpp: Any,
                                                   loaded: dict[str, Any]) -> None:
    # llama_chat_apply_template is llama.cpp's built-in template matcher, which llama-server uses
    # without --jinja; it returns a negative number for a template it does not recognise.
    template = llama_cpp.llama_model_chat_template(loaded["tiny-xs"].model, None)
    assert template == CHATML_TEMPLATE.encode()
    messages = (llama_cpp.llama_chat_message * 1)(
        llama_cpp.llama_chat_message(role=b"user", content=b"hi"))
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_chat_apply_template(template, messages, 1, True, buf, len(buf))
    assert buf.raw[:n] == b"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_corrupt_model_fails_to_load(llama_cpp: Any, tiny_models: ModelsDir) -> None:
    with pytest.raises(ValueError):
        llama_cpp.Llama(model_path=str(tiny_models["corrupt"].path), n_ctx=64, verbose=False)


def test_f16_weights_load(llama_cpp: Any, tmp_path: Path) -> None:
    path = write_gguf(TinyModel.sized("half", 3, "xs", dtype="f16"), tmp_path / "half.gguf")
    assert path.stat().st_size < write_gguf(TinyModel.sized("full", 3, "xs"),
                                            tmp_path / "full.gguf").stat().st_size
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        assert llm.detokenize(llm.tokenize(b"hello")) == b"hello"
        assert llm("hi", max_tokens=2)["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        llm.close()


def test_vision_model_answers_about_an_image(llama_cpp: Any, tiny_models: ModelsDir) -> None:
    from llama_cpp.llama_chat_format import Llava15ChatHandler

    entry = tiny_models["tiny-vision"]
    handler = Llava15ChatHandler(clip_model_path=str(entry.mmproj), verbose=False)
    llm = llama_cpp.Llama(model_path=str(entry.path), chat_handler=handler, n_ctx=256,
                          verbose=False)
    try:
        with_image = llm.create_chat_completion(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_uri(32, 32)}},
            {"type": "text", "text": "what is this"},
        ]}], max_tokens=4)
        text_only = llm.create_chat_completion(messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
        ]}], max_tokens=4)
    finally:
        llm.close()
    # A 32x32 image in 8x8 patches is 16 embeddings in the prompt.
    assert with_image["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"] >= 16


# --- the command line --------------------------------------------------------------------------

def test_cli_generates_and_lists_every_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from fixtures.__main__ import main

    assert main(["generate", str(tmp_path / "models")]) == 0
    out = capsys.readouterr().out
    for rel in ("tiny-xs.gguf", "tiny-vision/mmproj-tiny-vision.gguf",
                "tiny-sharded/tiny-sharded-00002-of-00002.gguf", "corrupt.gguf"):
        assert rel in out


def test_cli_reports_an_unwritable_dir_without_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fixtures.__main__ import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["generate", str(blocker / "models")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write models to") and "Traceback" not in err
