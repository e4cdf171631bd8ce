"""The catalog as llama-server's router shows it (server-models.cpp: ``load_models``,
``get_router_models``, ``update_status``): a preset model named by ``hf-repo``, its ``tags``,
``dedup-cache-models``, each model's ``architecture``, and the load stages the children report
on ``/models/sse``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from .routers import Router

pytestmark = pytest.mark.live

COMMIT = "c" * 40


def _cache_with(root: Path, repo: str, model: Path, file_name: str) -> None:
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "snapshots" / COMMIT).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    shutil.copyfile(model, folder / "snapshots" / COMMIT / file_name)


def test_models_lists_tags_architecture_and_hides_a_deduplicated_cache_entry(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /models: ``tags`` (a sorted set) from the preset; ``architecture`` from the files,
    an mmproj with a vision encoder adding ``image``; a cache entry whose file a section with
    ``dedup-cache-models`` names is not listed, and is still routed."""
    cache = tmp_path / "cache"
    _cache_with(cache, "tiny/tiny-xs-GGUF", tiny_models["tiny-xs"].path, "tiny-xs-F16.gguf")
    monkeypatch.setenv("LLAMA_CACHE", str(cache))
    preset = tmp_path / "models.ini"
    preset.write_text("[from-hub]\nhf-repo = tiny/tiny-xs-GGUF:F16\ntags = small,chat\n"
                      "dedup-cache-models = 1\n\n[tiny-vision]\nLLAMA_ARG_TAGS = vision\n")
    router = start_router("--models-preset", str(preset))
    models = router.models()
    assert "from-hub" in models and "tiny/tiny-xs-GGUF:F16" not in models, sorted(models)
    assert models["from-hub"]["tags"] == ["chat", "small"]
    assert models["tiny-vision"]["tags"] == ["vision"] and models["tiny-xs"]["tags"] == []
    text = {"input_modalities": ["text"], "output_modalities": ["text"]}
    assert models["tiny-xs"]["architecture"] == text
    assert models["from-hub"]["architecture"] == text
    assert models["tiny-vision"]["architecture"] == {
        "input_modalities": ["text", "image"], "output_modalities": ["text"]}
    assert router.chat("tiny/tiny-xs-GGUF:F16").status_code == 200  # hidden, still routed
    assert router.chat("from-hub").status_code == 200


def test_load_progress_names_the_text_and_projector_stages(
        start_router: Callable[..., Router]) -> None:
    """/models/sse: a loading model's ``progress`` is ``{stages, current, value}``, the stages
    ``text_model`` and, with a projector, ``mmproj_model``, each ending at 1.0, and once, as the
    projector starts, the bare ``{"stage": "mmproj_model"}`` the child says then (server-context.cpp
    ``load_model``; the router publishes each payload as it came); ``GET /models`` shows no
    progress; once loaded, the child's own ``architecture`` is listed."""
    router = start_router()
    assert router.chat("tiny-vision").status_code == 200
    router.events.wait_for("tiny-vision", "loaded")
    with router.events.lock:
        said = [m["data"]["progress"] for _, m in router.events.items
                if m.get("model") == "tiny-vision" and "progress" in m.get("data", {})]
    assert said, "no load progress was published"
    assert said.count({"stage": "mmproj_model"}) == 1, said
    bare = said.index({"stage": "mmproj_model"})
    progress = said[:bare] + said[bare + 1:]
    assert all(p["stages"] == ["text_model", "mmproj_model"] for p in progress), progress
    for stage in ("text_model", "mmproj_model"):
        values = [p["value"] for p in progress if p["current"] == stage]
        assert values and values == sorted(values) and values[-1] == 1.0, (stage, progress)
    currents = [p["current"] for p in progress]
    assert currents.index("mmproj_model") > max(
        i for i, c in enumerate(currents) if c == "text_model"), currents  # text first
    assert currents.index("mmproj_model") == bare, said  # the bare stage comes first
    listed = router.models()["tiny-vision"]
    assert listed["architecture"]["input_modalities"][:2] == ["text", "image"]
    assert "progress" not in listed and "progress" not in listed["status"], listed
