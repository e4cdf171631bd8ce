"""The model cache in the Hugging Face hub layout, as llama.cpp reads it (ROUTER.md section 5).

    <cache>/models--<user>--<repo>/refs/main                 the commit the cache holds
    <cache>/models--<user>--<repo>/snapshots/<commit>/FILE   links into blobs/ (or plain files)
    <cache>/models--<user>--<repo>/blobs/<etag>

A cached model is named ``user/repo:TAG``; the tag comes from the file name as llama.cpp derives
it (``tiny-F16.gguf`` and ``tiny-F16-00001-of-00002.gguf`` are tag ``F16``). The router lists
these names, the download child fills the cache, and ``DELETE /models`` empties it, all here.
Names come from clients, so every name is checked before it becomes a path, and no path leaves
the cache folder: what a link in the cache points to outside it is neither listed nor removed
(removal deletes the link itself, and a blob only in the repo's own ``blobs/``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

# A hub repo id as huggingface_hub's validate_repo_id takes it, ASCII only: each part 1-96
# characters, starting with a letter or digit and not ending with '-' or '.'; no "--" or ".."
# (``_valid_repo``), not ending in ".git". Always used with fullmatch: "$" would take a newline.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"{_REPO_PART}/{_REPO_PART}")
TAG = re.compile(r"[A-Za-z0-9_]{1,64}")
COMMIT = re.compile(r"[A-Za-z0-9_.-]{1,128}")
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
    repo, colon, tag = name.partition(":")
    if not _valid_repo(repo):
        raise BadName(f"model {name[:80]!r} is not a hub name like \"user/repo:TAG\"")
    if colon and not TAG.fullmatch(tag):
        raise BadName(f"model {name[:80]!r}: the tag {tag[:40]!r} is not like Q4_K_M or F16")
    return repo, (tag.upper() if colon else None)


def _valid_repo(repo: str) -> bool:
    """``user/repo`` as the hub library takes it, so that no name it refuses gets past us."""
    return (REPO_ID.fullmatch(repo) is not None and "--" not in repo and ".." not in repo
            and not repo.lower().endswith(".git"))


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
    """The repo's folder, not resolved: a link planted in its place is removed as a link."""
    if not _valid_repo(repo):  # pragma: no cover - split_name checked it
        raise BadName(f"repo {repo!r} is not a hub name like \"user/repo\"")
    return root / ("models--" + repo.replace("/", "--"))


def _inside(path: Path, real_root: Path) -> bool:
    """Whether ``path``, its links followed, is in the (resolved) folder ``real_root``."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a link loop (Python < 3.13)
        return False
    return real_root in real.parents


def _snapshot(folder: Path) -> Path | None:
    """The snapshot ``refs/main`` names: a real folder in the repo folder, or None."""
    ref = folder / "refs" / "main"
    try:
        if not ref.is_file():  # not a FIFO or a device someone put there: reading would block
            return None
        with ref.open("rb") as f:
            commit = f.read(256).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    snapshot = folder / "snapshots" / commit
    if not COMMIT.fullmatch(commit) or commit in (".", "..") or snapshot.is_symlink():
        return None
    return snapshot if snapshot.is_dir() and _inside(snapshot, folder.resolve()) else None


def _walk_files(top: Path) -> Iterator[Path]:
    """Every file and link under ``top``, never looking into a linked folder (top included)."""
    if top.is_symlink() or not top.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(top):  # followlinks=False
        for name in (*filenames, *dirnames):
            path = Path(dirpath, name)
            if name in filenames or path.is_symlink():
                yield path


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
    real_root = root.resolve()
    for folder in sorted(root.glob("models--*--*")):
        repo = folder.name[len("models--"):].replace("--", "/", 1)
        if folder.is_symlink() or not _valid_repo(repo):
            continue
        snapshot = _snapshot(folder)
        if snapshot is None:
            continue
        # A dangling link (blob gone) is not a file; a link out of the cache is not a model.
        names = sorted(p.relative_to(snapshot).as_posix() for p in _walk_files(snapshot)
                       if p.name.endswith(".gguf") and p.is_file() and _inside(p, real_root))
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
    no model is left in it.

    Nothing outside the repo folder is touched, whatever links were planted in it: links are
    removed, never followed (a linked folder is not entered, a link to a file goes and the file
    stays), and a blob goes only when a removed file linked to it in the repo's own ``blobs/``.
    Files are removed through descriptors of folders opened without following links, so a
    folder swapped for a link meanwhile is not followed either."""
    repo, tag = split_name(name)
    folder = repo_folder(root, repo)
    if folder.is_symlink():  # not a folder the hub library made: the link goes, not its target
        folder.unlink()
        return True
    repo_fd = _open_folder(folder)
    if repo_fd is None:
        return False
    try:
        removed = _remove_files(folder, repo_fd, tag)
    finally:
        os.close(repo_fd)
    real_root = root.resolve()
    models_left = any(parse_gguf_name(p.name) and not _is_extra(p.name) and p.is_file()
                      and _inside(p, real_root) for p in _walk_files(folder / "snapshots"))
    if tag is None or not models_left:
        shutil.rmtree(folder, ignore_errors=True)  # it does not follow links (fd-based)
        removed = True
    return removed


def _open_folder(path: Path | str, dir_fd: int | None = None) -> int | None:
    """A descriptor of the folder ``path`` (in ``dir_fd``); None if it is a link or no folder."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None


def _no_missing(walk: Iterator[tuple[str, list[str], list[str], int]]
                ) -> Iterator[tuple[str, list[str], list[str], int]]:
    """``walk``, ended quietly if its top folder is not there (a download that failed before
    its first snapshot file)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        yield from walk


def _remove_files(folder: Path, repo_fd: int, tag: str | None) -> bool:
    """Remove the snapshot files of ``tag`` (none without one) with their blobs, and partial
    downloads, from the repo folder open as ``repo_fd``."""
    removed = False
    blobs_fd = _open_folder("blobs", repo_fd)
    real_blobs = os.path.realpath(folder / "blobs")
    try:
        # fwalk with follow_symlinks=False enters neither a linked "snapshots" nor a linked
        # folder below it; a link to a folder is listed among the folders, and removed as a link.
        walk = os.fwalk("snapshots", dir_fd=repo_fd) if tag is not None else iter(())
        for top, dirs, files, top_fd in _no_missing(walk):
            for entry in (*files, *dirs):
                parsed = parse_gguf_name(entry)
                if parsed is None or parsed.tag != tag or "mmproj" in entry.lower():
                    continue
                try:
                    mode = os.lstat(entry, dir_fd=top_fd).st_mode
                    blob = None
                    if stat.S_ISLNK(mode):
                        target = os.path.realpath(os.path.join(
                            folder, top, os.readlink(entry, dir_fd=top_fd)))
                        if os.path.dirname(target) == real_blobs:
                            blob = os.path.basename(target)
                    elif stat.S_ISDIR(mode):
                        continue  # a real folder named like a model file: not one
                    os.unlink(entry, dir_fd=top_fd)
                except FileNotFoundError:
                    continue
                removed = True
                if blob is not None and blobs_fd is not None:
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(blob, dir_fd=blobs_fd)
        for entry in os.listdir(blobs_fd) if blobs_fd is not None else ():
            if entry.endswith(".incomplete"):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(entry, dir_fd=blobs_fd)
                    removed = True
    finally:
        if blobs_fd is not None:
            os.close(blobs_fd)
    return removed
