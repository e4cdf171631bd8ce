"""A model's ``architecture`` in ``GET /models``: what it takes in and gives out, read from its
GGUF headers without loading it, as llama-server does (server-common.cpp,
``server_model_architecture_json``; server-models.cpp, ``update_caps``).

Input is always ``text``, plus ``image`` and ``audio`` when the projector (mmproj) says it has
that encoder (``clip.has_vision_encoder``, ``clip.has_audio_encoder``). Output is ``text``, or
``decisions`` for a model whose ``<arch>.decision.type`` is one of llama.cpp's decision types.
A file that cannot be read says nothing beyond the defaults (upstream logs and keeps them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

KEYS = ("input_modalities", "output_modalities")
# common/common.cpp: COMMON_DECISION_TYPE_NAMES
DECISION_TYPES = frozenset({"openjev", "lev", "kev", "nimble", "laya", "clef"})


def text_only() -> dict[str, list[str]]:
    return {"input_modalities": ["text"], "output_modalities": ["text"]}


def read_metadata(path: Path | None) -> dict[str, object]:
    """A GGUF file's scalar metadata, read bounded; empty for no file or an unreadable one."""
    if path is None:
        return {}
    # imported here: the child reads only a projector's header, and starts without the router
    from refimpl.router.memory import gguf_metadata
    try:
        return gguf_metadata(path)
    except Exception:  # noqa: BLE001 - an unreadable file has the default modalities
        return {}


def architecture(model: Path | None, mmproj: Path | None) -> dict[str, list[str]]:
    """The ``architecture`` object for a model file and its projector (None: no projector)."""
    return from_metadata(read_metadata(model), read_metadata(mmproj))


def from_metadata(model: Mapping[str, object], mmproj: Mapping[str, object]
                  ) -> dict[str, list[str]]:
    """The ``architecture`` object from the model's and the projector's metadata."""
    out = text_only()
    arch = model.get("general.architecture")
    if isinstance(arch, str) and model.get(f"{arch}.decision.type") in DECISION_TYPES:
        out["output_modalities"] = ["decisions"]
    for key, modality in (("clip.has_vision_encoder", "image"),
                          ("clip.has_audio_encoder", "audio")):
        if mmproj.get(key) is True:
            out["input_modalities"].append(modality)
    return out


def merged(offline: dict[str, list[str]], child: object) -> dict[str, list[str]]:
    """``offline`` with each array a loaded child reported replacing it whole; a missing or
    malformed one changes nothing (upstream's ``update_status``)."""
    out = {k: list(v) for k, v in offline.items()}
    if isinstance(child, dict):
        for key in KEYS:
            value = child.get(key)
            if isinstance(value, list) and all(isinstance(m, str) for m in value):
                out[key] = list(value)
    return out
