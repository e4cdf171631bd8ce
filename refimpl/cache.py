"""The model cache in the Hugging Face hub layout, as llama.cpp reads it (ROUTER.md section 5).

    <cache>/models--<user>--<repo>/refs/main                 the commit the cache holds
    <cache>/models--<user>--<repo>/snapshots/<commit>/FILE   links into blobs/ (or plain files)
    <cache>/models--<user>--<repo>/blobs/<etag>

A cached model is named ``user/repo:TAG``; the tag comes from the file name as llama.cpp derives
it (``tiny-F16.gguf`` and ``tiny-F16-00001-of-00002.gguf`` are tag ``F16``). The router lists
these names, the download child fills the cache, and ``DELETE /models`` empties it, all here.
Names come from clients, so every name is checked before it becomes a path, and no path leaves
the cache folder.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
TAG = re.compile(r"^[A-Za-z0-9_]{1,64}$")
SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})$", re.IGNORECASE)
FILE_TAG = re.compile(r"[-.](?P<tag>[A-Z0-9_]+)$", re.IGNORECASE)
PREFERRED_TAGS = ("Q4_K_M", "Q4_0", "Q8_0", "F16")  # when a name gives no tag


class BadName(ValueError):
    """A model name that is not ``user/repo`` or ``user/repo:TAG``; the message says why."""


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where the cache lives: the first of LLAMA_CACHE, HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,
    HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub (llama.cpp's order)."""
    for var, sub in (("LLAMA_CACHE", ""), ("HF_HUB_CACHE", ""), ("HUGGINGFACE_HUB_CACHE", ""),
                     ("HF_HOME", "hub"), ("XDG_CACHE_HOME", "huggingface/hub")):
        value = env.get(var)
        if value:
            return Path(value) / sub if sub else Path(value)
    return Path.home() / ".cache" / "huggingface" / "hub"


def split_name(name: object) -> tuple[str, str | None]:
    """``'user/repo:tag'`` -> ``('user/repo', 'TAG')``; ``'user/repo'`` -> ``('user/repo', None)``."""
    if not isinstance(name, str) or not name:
        raise BadName("\"model\" must be a non-empty string like \"user/repo:TAG\"")
    if len(name) > 256:
        raise BadName(f"model name of {len(name)} characters is too long (at most 256)")
    repo, _, tag = name.partition(":")
    if not REPO_ID.match(repo) or ".." in repo:
        raise BadName(f"model {name[:80]!r} is not a hub name like \"user/repo:TAG\"")
    if _ and not TAG.match(tag):
        raise BadName(f"model {name[:80]!r}: the tag {tag[:40]!r} is not like Q4_K_M or F16")
    return repo, (tag.upper() if _ else None)


@dataclass(frozen=True)
class GgufName:
    prefix: str
    tag: str  # "" when the file name carries none
    index: int
    count: int


def parse_gguf_name(path: str) -> GgufName | None:
    """llama.cpp's reading of a GGUF file name (shards, tag); None if it is not a .gguf."""
    if not path.lower().endswith(".gguf"):
        return None
    prefix = path[:-5]
    index = count = 1
    split = SPLIT.match(prefix)
    if split:
        prefix, index, count = split["prefix"], int(split["index"]), int(split["count"])
    tag = FILE_TAG.search(prefix)
    return GgufName(prefix, tag["tag"].upper() if tag else "", index, count)


def _is_extra(path: str) -> bool:
    """Files beside a model that are not a model of their own (projectors, draft heads)."""
    base = path.rsplit("/", 1)[-1].lower()
    return any(key in base for key in ("mmproj", "mtp-", "eagle3-", "dflash-", "dspark-"))


@dataclass(frozen=True)
class Selection:
    """What a ``user/repo:TAG`` name means in a repo: its tag, its file(s) and a projector."""

    tag: str
    files: tuple[str, ...]  # the model's shards, first shard first
    mmproj: str | None


def select_files(files: list[str], tag: str | None) -> Selection | None:
    """The files of ``tag`` (or of the preferred tag when ``None``) among a repo's file names."""
    by_tag: dict[str, list[tuple[int, str]]] = {}
    for f in files:
        parsed = parse_gguf_name(f)
        if parsed is None or _is_extra(f) or not parsed.tag:
            continue
        by_tag.setdefault(parsed.tag, []).append((parsed.index, f))
    if tag is None:
        tag = next((t for t in PREFERRED_TAGS if t in by_tag), min(by_tag, default=None))
    if tag is None or tag not in by_tag or 1 not in {i for i, _ in by_tag[tag]}:
        return None
    shards = tuple(f for _, f in sorted(by_tag[tag]))
    projectors = sorted(f for f in files if f.lower().endswith(".gguf")
                        and "mmproj" in f.rsplit("/", 1)[-1].lower())
    mmproj = next((p for p in projectors if (parse_gguf_name(p) or GgufName("", "", 1, 1)).tag
                   == tag), projectors[0] if projectors else None)
    return Selection(tag, shards, mmproj)


def repo_folder(root: Path, repo: str) -> Path:
    folder = root / ("models--" + repo.replace("/", "--"))
    if folder.resolve().parent != root.resolve():  # pragma: no cover - REPO_ID forbids it
        raise BadName(f"repo {repo!r} would leave the cache folder")
    return folder


def _snapshot(folder: Path) -> Path | None:
    try:
        commit = (folder / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snapshot = folder / "snapshots" / commit
    return snapshot if commit and "/" not in commit and snapshot.is_dir() else None


@dataclass(frozen=True)
class CachedModel:
    name: str  # user/repo:TAG
    path: Path  # its first shard
    mmproj: Path | None
    files: tuple[Path, ...]


def list_cached(root: Path) -> list[CachedModel]:
    """Every complete ``user/repo:TAG`` model in the cache, sorted by name."""
    out: list[CachedModel] = []
    if not root.is_dir():
        return out
    for folder in sorted(root.glob("models--*--*")):
        repo = folder.name[len("models--"):].replace("--", "/", 1)
        snapshot = _snapshot(folder)
        if snapshot is None or not REPO_ID.match(repo):
            continue
        names = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.gguf")
                       if p.is_file())  # a dangling link (blob gone) is not a file
        tags = sorted({n.tag for f in names if (n := parse_gguf_name(f)) and n.tag
                       and not _is_extra(f)})
        for tag in tags:
            chosen = select_files(names, tag)
            if chosen is None:
                continue
            parts = [snapshot / f for f in chosen.files]
            first = parse_gguf_name(chosen.files[0])
            if first is not None and len(parts) < first.count:
                continue  # a shard is missing: not a usable model
            out.append(CachedModel(f"{repo}:{tag}", parts[0],
                                   snapshot / chosen.mmproj if chosen.mmproj else None,
                                   tuple(parts)))
    return out


def remove_cached(root: Path, name: str) -> bool:
    """Delete ``user/repo:TAG`` (or the whole repo, without a tag) from the cache, with what an
    unfinished download left behind; True if anything was removed. The repo's folder goes when
    no model is left in it."""
    repo, tag = split_name(name)
    folder = repo_folder(root, repo)
    if not folder.exists():
        return False
    removed = False
    blobs = folder / "blobs"
    if tag is not None:
        for snapshot in (folder / "snapshots").glob("*"):
            for path in list(snapshot.rglob("*.gguf")):
                parsed = parse_gguf_name(path.name)
                if parsed is None or parsed.tag != tag or "mmproj" in path.name.lower():
                    continue
                target = path.resolve() if path.is_symlink() else None
                path.unlink()
                removed = True
                if target is not None and target.parent == blobs.resolve():
                    target.unlink(missing_ok=True)
    for partial in blobs.glob("*.incomplete") if blobs.is_dir() else []:
        partial.unlink(missing_ok=True)
        removed = True
    models_left = any(parse_gguf_name(p.name) and not _is_extra(p.name)
                      for p in (folder / "snapshots").rglob("*.gguf") if p.is_file())
    if tag is None or not models_left:
        shutil.rmtree(folder, ignore_errors=True)
        removed = True
    return removed
