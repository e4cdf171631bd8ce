"""The hub-layout cache: names from clients, file selection by tag, listing and removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from refimpl.cache import (BadName, cache_dir, list_cached, parse_gguf_name, remove_cached,
                           select_files, split_name)


@pytest.mark.parametrize("name, expected", [
    ("user/repo", ("user/repo", None)),
    ("user/repo:q4_k_m", ("user/repo", "Q4_K_M")),
    ("ggml-org/test-model.v2-GGUF:F16", ("ggml-org/test-model.v2-GGUF", "F16")),
])
def test_good_names(name: str, expected: tuple[str, str | None]) -> None:
    assert split_name(name) == expected


@pytest.mark.parametrize("name", [
    "", None, 42, "repo", "../x", "user/../x", "user/..", "/etc/passwd", "user/repo/extra",
    "user/repo:../x", "user/repo:", "a\x00b/c", "user/re po", "x" * 300 + "/y", "user/repo:F16:x",
])
def test_bad_names_are_refused_with_a_reason(name: object) -> None:
    with pytest.raises(BadName) as info:
        split_name(name)
    assert str(info.value)


def test_file_names_as_llama_cpp_reads_them() -> None:
    plain = parse_gguf_name("m-q4_k_m.gguf")
    assert plain is not None and (plain.prefix, plain.tag, plain.count) == ("m-q4_k_m", "Q4_K_M", 1)
    shard = parse_gguf_name("big-F16-00002-of-00003.gguf")
    assert shard is not None and (shard.tag, shard.index, shard.count) == ("F16", 2, 3)
    assert parse_gguf_name("readme.md") is None


def test_select_files_by_tag_with_shards_and_projector() -> None:
    files = ["a-F16-00002-of-00002.gguf", "a-F16-00001-of-00002.gguf", "a-Q8_0.gguf",
             "mmproj-a-F16.gguf", "README.md"]
    f16 = select_files(files, "F16")
    assert f16 is not None
    assert f16.files == ("a-F16-00001-of-00002.gguf", "a-F16-00002-of-00002.gguf")
    assert f16.mmproj == "mmproj-a-F16.gguf"
    q8 = select_files(files, None)  # no tag: the preferred one present
    assert q8 is not None and q8.tag == "Q8_0"
    assert select_files(files, "Q2_K") is None
    assert select_files(["mmproj-only-F16.gguf"], None) is None


def _cached(root: Path, repo: str, files: dict[str, bytes], commit: str = "c" * 40) -> Path:
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "blobs").mkdir()
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for i, (name, data) in enumerate(files.items()):
        blob = folder / "blobs" / f"{i:064x}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)
    return folder


def test_list_and_remove(tmp_path: Path) -> None:
    _cached(tmp_path, "u/a-GGUF", {"a-F16.gguf": b"1", "a-Q8_0.gguf": b"2",
                                    "mmproj-a-F16.gguf": b"3"})
    _cached(tmp_path, "u/s-GGUF", {"s-F16-00001-of-00002.gguf": b"4"})  # a shard is missing
    names = [m.name for m in list_cached(tmp_path)]
    assert names == ["u/a-GGUF:F16", "u/a-GGUF:Q8_0"]
    (tmp_path / "models--u--a-GGUF" / "blobs" / "x.incomplete").write_bytes(b"partial")
    assert remove_cached(tmp_path, "u/a-GGUF:F16")
    assert [m.name for m in list_cached(tmp_path)] == ["u/a-GGUF:Q8_0"]
    assert not list((tmp_path / "models--u--a-GGUF" / "blobs").glob("*.incomplete"))
    assert remove_cached(tmp_path, "u/a-GGUF:Q8_0")
    assert not (tmp_path / "models--u--a-GGUF").exists()  # nothing left: the folder goes
    assert not remove_cached(tmp_path, "u/none-GGUF:F16")
    with pytest.raises(BadName):
        remove_cached(tmp_path, "../../etc:F16")
    assert (tmp_path / "models--u--s-GGUF").exists()  # untouched


def test_cache_dir_follows_llama_cpp_order(tmp_path: Path) -> None:
    assert cache_dir({"LLAMA_CACHE": "/a", "HF_HUB_CACHE": "/b"}) == Path("/a")
    assert cache_dir({"HF_HOME": "/h"}) == Path("/h/hub")
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")
