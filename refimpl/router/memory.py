"""The memory budget: what each device offers, and what each model needs, known before it loads.

A model's need is estimated from its GGUF metadata alone (no load): the weights (the file sizes,
all shards and the mmproj included) plus the KV cache for the context the child will use
(2 x layers x context x KV width x 2 bytes, f16). This machine's llama.cpp build is CPU only, so
the one device measured is ``host`` (available memory, from psutil); ``--device-memory`` declares
capacities instead, which is how tests drive memory eviction with tiny models.
"""

from __future__ import annotations

from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs without types-psutil

from .sources import SHARD, ModelEntry

HOST = "host"
F16 = 2


def host_available() -> int | None:
    """Bytes of memory available now (MemAvailable on Linux); None where it cannot be read."""
    try:
        available: int = psutil.virtual_memory().available
    except (OSError, RuntimeError):
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


def gguf_metadata(path: Path) -> dict[str, object]:
    """The scalar key/value metadata of a GGUF file."""
    from gguf import GGUFReader  # a heavy import, needed only with a memory budget

    reader = GGUFReader(str(path))
    out: dict[str, object] = {}
    for name, field in reader.fields.items():
        if len(field.data) == 1 and field.types and len(field.types) == 1:
            part = field.parts[field.data[0]]
            try:
                out[name] = part.tobytes().decode() if part.dtype.kind == "u" and \
                    field.types[0].name == "STRING" else part.tolist()[0]
            except (UnicodeDecodeError, IndexError):
                continue
    return out
