"""ROUTER.md sections 5 and 6: presets, models-dir layouts, the memory budget."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

from .conftest import Router

pytestmark = pytest.mark.live


def test_models_dir_layouts_are_listed(start_router: Callable[..., Router]) -> None:
    router = start_router()
    names = set(router.models())
    assert {"tiny-xs", "tiny-l", "tiny-vision", "tiny-sharded", "corrupt"} <= names, names
    assert not any(n.startswith("mmproj") or "-0000" in n for n in names), names


def test_sharded_and_multimodal_models_load(start_router: Callable[..., Router]) -> None:
    router = start_router()
    for model in ("tiny-sharded", "tiny-vision"):
        r = router.chat(model)
        assert r.status_code == 200, (model, r.text)


def test_preset_alias_load_on_startup_and_precedence(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    preset = tmp_path / "models.ini"
    preset.write_text(
        "[*]\nctx-size = 256\n\n"
        f"[small]\nmodel = {tiny_models['tiny-xs'].path}\nalias = little\n"
        "load-on-startup = true\nstop-timeout = 2\nctx-size = 384\n")
    router = start_router("--models-preset", str(preset), "-c", "448",
                          models_dir=tmp_path / "empty")
    router.events.wait_for("small", "loaded", timeout=60)  # load-on-startup
    info = router.models()["small"]
    assert info["aliases"] == ["little"], info
    args = info["status"]["args"]
    # router command line > model section > [*]
    assert "448" in args and "384" not in args and "256" not in args, args
    assert router.chat("little").status_code == 200  # routed by alias


def test_memory_budget_evicts_to_fit(start_router: Callable[..., Router], target: Any,
                                     tiny_models: Any) -> None:
    if target.binary:
        pytest.skip("--device-memory is the reference router's switch")
    big, small = tiny_models["tiny-l"].size_bytes, tiny_models["tiny-m"].size_bytes
    budget = big + small // 2  # tiny-l fits alone, tiny-l and tiny-m do not fit together
    router = start_router("--models-max", "0", "--device-memory", f"host={budget}", "-c", "64")
    assert router.tracked("tiny-l")[0] == 200
    assert router.tracked("tiny-m")[0] == 200
    router.events.wait_for("tiny-l", "unloaded", timeout=30)
    time.sleep(0.3)
    statuses = {name: m["status"]["value"] for name, m in router.models().items()}
    assert statuses["tiny-m"] == "loaded" and statuses["tiny-l"] == "unloaded", statuses
    router.check(models_max=0)


def test_reload_adds_new_models_and_unloads_vanished_ones(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "first.gguf").write_bytes(tiny_models["tiny-xs"].path.read_bytes())
    router = start_router(models_dir=folder)
    assert set(router.models()) == {"first"}
    assert router.chat("first").status_code == 200
    (folder / "first.gguf").unlink()
    (folder / "second.gguf").write_bytes(tiny_models["tiny-xs"].path.read_bytes())
    r = router.client.get("/models", params={"reload": "1"})
    assert r.status_code == 200
    assert {m["id"] for m in r.json()["data"]} == {"second"}, r.json()
    router.events.wait_for("first", "unloaded", timeout=30)  # it was running: unloaded
    assert router.chat("second").status_code == 200
    assert any(m.get("event") == "models_reload" for _, m in router.events.items)


def test_sleep_idle_seconds_reaches_the_children(start_router: Callable[..., Router]) -> None:
    router = start_router("--sleep-idle-seconds", "1")
    assert router.tracked("tiny-xs")[0] == 200
    router.events.wait_for("tiny-xs", "sleeping", timeout=15)
    assert router.tracked("tiny-xs")[0] == 200  # a request wakes it
    router.events.wait_for("tiny-xs", "loaded", timeout=15)
    router.check(models_max=4)
