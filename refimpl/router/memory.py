"""The memory budget: what each device offers, and what each model needs, known before it loads.

A model's need is estimated from its GGUF metadata alone (no load): the weights (the file sizes,
all shards and the mmproj included) plus the KV cache for the context the child will use
(2 x layers x context x KV width x 2 bytes, f16). This machine's llama.cpp build is CPU only, so
the one device measured is ``host`` (available memory, from psutil); ``--device-memory`` declares
capacities instead, which is how tests drive memory eviction with tiny models.
"""

from __future__ import annotations

import functools
import os
import stat
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO

from .sources import SHARD, ModelEntry

HOST = "host"
F16 = 2


def host_available() -> int | None:
    """Bytes of memory available now (MemAvailable on Linux, read from /proc/meminfo; psutil
    elsewhere, imported only then: 1 MiB of the router's memory); None where it cannot be read."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs without types
        available: int = psutil.virtual_memory().available
    except (ImportError, OSError, RuntimeError):
        return None
    return available


def device_budget(margin_mib: int, declared: dict[str, int]) -> dict[str, int]:
    """Bytes models may use per device: declared capacities, else free memory minus the margin;
    empty (no budget) when the margin is 0 and nothing is declared."""
    if declared:
        return dict(declared)
    if margin_mib <= 0:
        return {}
    free = host_available()
    if free is None:
        return {}
    return {HOST: max(0, free - margin_mib * 1024 * 1024)}


def model_files(entry: ModelEntry) -> list[Path]:
    assert entry.path is not None
    files = [entry.path]
    shard = SHARD.match(entry.path.name)
    if shard is not None:
        total = int(shard["total"])
        files = [entry.path.with_name(f"{shard['base']}-{n:05d}-of-{total:05d}.gguf")
                 for n in range(1, total + 1)]
    if entry.mmproj is not None:
        files.append(entry.mmproj)
    return [f for f in files if f.exists()]


def estimate_need(entry: ModelEntry, devices: dict[str, int]) -> dict[str, int]:
    """Bytes ``entry`` needs on each device (all of it on ``host`` on this CPU-only build)."""
    if not devices or entry.path is None:
        return {}
    weights = sum(f.stat().st_size for f in model_files(entry))
    n_ctx = _int(entry.flags.get("--ctx-size"))
    return {HOST: weights + kv_cache_bytes(entry.path, n_ctx)} if HOST in devices else {
        next(iter(devices)): weights + kv_cache_bytes(entry.path, n_ctx)}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def kv_cache_bytes(path: Path, n_ctx: int | None) -> int:
    """The f16 KV cache of the model at ``path`` for ``n_ctx`` tokens (its trained context when
    None); 0 when the metadata cannot be read (a corrupt file fails at load anyway)."""
    try:
        meta = gguf_metadata(path)
    except Exception:  # noqa: BLE001 - any unreadable file just has no estimate
        return 0
    arch = str(meta.get("general.architecture", "llama"))

    def number(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return int(value) if isinstance(value, (int, float)) else default

    layers = number("block_count", 0)
    embd = number("embedding_length", 0)
    heads = number("attention.head_count", 1) or 1
    heads_kv = number("attention.head_count_kv", heads) or heads
    ctx = n_ctx or number("context_length", 0)
    return 2 * layers * ctx * (embd // heads * heads_kv) * F16


# Reading a GGUF header is bounded: a file can hold arrays of millions of entries (a 1M-entry
# array took the gguf package's reader 26 s), and only a few scalars are needed here. Arrays are
# skipped without being built; past these bounds the reading stops with what it has.
META_SECONDS = 2.0
META_BYTES = 256 * 1024 * 1024  # of header read or skipped
META_STRING = 64 * 1024  # a longer string value is skipped, not kept
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@functools.cache
def _quant_sizes() -> tuple[Any, Any]:
    """gguf's table of block sizes per tensor type, from its ``constants`` module alone: the
    ``gguf`` package itself imports numpy, which with its BLAS would be 25 MiB of the router's
    memory for one table (issue: router peak memory)."""
    import importlib.util
    import sys

    name = "gguf.constants"
    if name not in sys.modules:
        spec = importlib.util.find_spec("gguf")
        assert spec is not None and spec.submodule_search_locations, "gguf is not installed"
        path = Path(next(iter(spec.submodule_search_locations))) / "constants.py"
        constants_spec = importlib.util.spec_from_file_location("_refimpl_gguf_constants", path)
        assert constants_spec is not None and constants_spec.loader is not None
        module = importlib.util.module_from_spec(constants_spec)
        constants_spec.loader.exec_module(module)
        return module.GGML_QUANT_SIZES, module.GGMLQuantizationType
    module = sys.modules[name]
    return module.GGML_QUANT_SIZES, module.GGMLQuantizationType


class _Truncated(Exception):
    """The header ends early, is malformed, or is past the bounds."""


def gguf_metadata(path: Path, seconds: float = META_SECONDS,
                  limit: int = META_BYTES) -> dict[str, object]:
    """The scalar key/value metadata of a GGUF file (numbers, booleans, strings up to
    META_STRING bytes), read within ``seconds`` and ``limit`` bytes: arrays are skipped unread
    (fixed-size ones by a seek, strings by their lengths alone). Raises ValueError for a file
    that is not GGUF; a header cut short or past the bounds gives the keys read before it."""
    with _open_regular(path) as f:
        return _GgufHeader(f, time.monotonic() + seconds, limit).read()


def gguf_complete(path: Path, seconds: float = META_SECONDS, limit: int = META_BYTES) -> bool:
    """Whether a GGUF file holds all of its tensor data: its header reads whole within
    ``seconds`` and ``limit`` bytes, and every tensor it lists ends within the file. A file cut
    short (a download stopped half-way) does not, though its metadata may read."""
    with _open_regular(path) as f:
        return _GgufHeader(f, time.monotonic() + seconds, limit).complete(path.stat().st_size)


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; ValueError otherwise. Opened without
    blocking first: a FIFO named ``*.gguf`` would otherwise hang its reader (start-up, or the
    reload's worker thread) until something writes to it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=1 << 20)
    except BaseException:
        os.close(fd)
        raise


class _GgufHeader:
    def __init__(self, f: BinaryIO, deadline: float, limit: int) -> None:
        self.f = f
        self.deadline = deadline
        self.limit = limit
        self.order = "<"
        self.wide = True  # v2+: 64-bit counts and lengths

    def read(self) -> dict[str, object]:
        if self.f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        try:
            version = self._unpack("<I")
        except _Truncated:
            raise ValueError("not a GGUF file: too short") from None
        if version > 0xFFFF:  # a big-endian file
            self.order = ">"
            version = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version not in (1, 2, 3):
            raise ValueError(f"GGUF version {version} is not known")
        self.wide = version >= 2
        out: dict[str, object] = {}
        try:
            self._count()  # tensors
            for _ in range(self._count()):
                if time.monotonic() > self.deadline or self.f.tell() > self.limit:
                    break
                key = self._string(META_STRING)
                kind = self._unpack("<I")
                value = self._value(kind)
                if key is not None and value is not None:
                    out[key] = value
        except _Truncated:
            pass
        return out

    def complete(self, size: int) -> bool:
        GGML_QUANT_SIZES, GGMLQuantizationType = _quant_sizes()

        if self.f.read(4) != b"GGUF":
            return False
        try:
            version = self._unpack("<I")
            if version > 0xFFFF:
                self.order = ">"
                version = int.from_bytes(version.to_bytes(4, "little"), "big")
            if version not in (1, 2, 3):
                return False
            self.wide = version >= 2
            tensors, alignment = self._count(), 32
            for _ in range(self._count()):
                if time.monotonic() > self.deadline or self.f.tell() > self.limit:
                    return False
                key = self._string(META_STRING)
                value = self._value(self._unpack("<I"))
                if key == "general.alignment" and isinstance(value, int) and value > 0:
                    alignment = value
            end = 0  # of the tensor data, from its start
            for _ in range(tensors):
                if time.monotonic() > self.deadline or self.f.tell() > self.limit:
                    return False
                self._string(0)
                elements = 1
                for _ in range(self._unpack("<I")):
                    elements *= self._count()
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(self._unpack("<I"))]
                end = max(end, self._unpack("<Q") + elements // block * type_size)
        except (_Truncated, ValueError, KeyError):
            return False
        start = -(-self.f.tell() // alignment) * alignment
        return start + end <= size

    def _unpack(self, fmt: str) -> Any:
        fmt = self.order + fmt[1:]
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise _Truncated
        return struct.unpack(fmt, data)[0]

    def _count(self) -> int:
        count: int = self._unpack("<Q" if self.wide else "<I")
        return count

    def _skip(self, size: int) -> None:
        if size < 0 or self.f.tell() + size > self.limit:
            raise _Truncated
        self.f.seek(size, 1)

    def _string(self, keep: int) -> str | None:
        size = self._count()
        if size > keep:
            self._skip(size)
            return None
        data = self.f.read(size)
        if len(data) != size:
            raise _Truncated
        return data.decode("utf-8", errors="replace")

    def _value(self, kind: int) -> object:
        if kind in _SCALARS:
            return self._unpack(_SCALARS[kind])
        if kind == _STRING:
            return self._string(META_STRING)
        if kind != _ARRAY:
            raise _Truncated  # an unknown type: its size cannot be known
        element, count = self._unpack("<I"), self._count()
        if element in _SCALARS:
            self._skip(count * struct.calcsize(_SCALARS[element]))
            return None
        if element == _STRING:
            self._skip_strings(count)
            return None
        for i in range(count):  # arrays of arrays: each says its own length
            if i % 4096 == 0 and (time.monotonic() > self.deadline
                                  or self.f.tell() > self.limit):
                raise _Truncated
            self._value(element)
        return None

    def _skip_strings(self, count: int) -> None:
        """Skip ``count`` strings, reading only their lengths, a block at a time."""
        fmt = self.order + ("Q" if self.wide else "I")
        width = struct.calcsize(fmt)
        unpack = struct.Struct(fmt).unpack_from
        buf, pos = b"", 0
        while count:
            if time.monotonic() > self.deadline or self.f.tell() > self.limit:
                raise _Truncated
            block = self.f.read(1 << 20)
            buf, pos = buf[pos:] + block, 0
            if not block:
                raise _Truncated
            end = len(buf)
            while count and pos + width <= end:
                size = unpack(buf, pos)[0]
                if pos + width + size > end:  # reaches past the block: seek over the rest
                    self._skip(pos + width + size - end)
                    buf, pos = b"", 0
                    count -= 1
                    break
                pos += width + size
                count -= 1
        self.f.seek(pos - len(buf), 1)  # give back what was read past the last string
