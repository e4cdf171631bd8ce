"""ROUTER.md sections 5 and 6: presets, models-dir layouts, the memory budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from .routers import Router
from .deviations import deviation

pytestmark = pytest.mark.live


def test_models_dir_layouts_are_listed(start_router: Callable[..., Router]) -> None:
    """Section 5: --models-dir lists *.gguf files, multimodal and sharded sub-folders."""
    router = start_router()
    names = set(router.models())
    assert {"tiny-xs", "tiny-l", "tiny-vision", "tiny-sharded", "corrupt"} <= names, names
    assert not any(n.startswith("mmproj") or "-0000" in n for n in names), names


def test_sharded_and_multimodal_models_load(start_router: Callable[..., Router]) -> None:
    """Section 5: a sharded model and a model with its mmproj load and answer."""
    router = start_router()
    for model in ("tiny-sharded", "tiny-vision"):
        r = router.chat(model)
        assert r.status_code == 200, (model, r.text)


def test_preset_alias_load_on_startup_and_precedence(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    """Section 5: a preset's alias and load-on-startup; router CLI > model section > [*]."""
    (tmp_path / "empty").mkdir()
    preset = tmp_path / "models.ini"
    preset.write_text(
        "[*]\nctx-size = 256\n\n"
        f"[small]\nmodel = {tiny_models['tiny-xs'].path}\nalias = little\n"
        "load-on-startup = true\nstop-timeout = 2\nctx-size = 384\n")
    router = start_router("--models-preset", str(preset), "-c", "448",
                          models_dir=tmp_path / "empty")
    router.wait_status("small", "loaded")  # load-on-startup (maybe before the SSE subscription)
    info = router.models()["small"]
    assert info["aliases"] == ["little"], info
    args = info["status"]["args"]
    # router command line > model section > [*]
    assert "448" in args and "384" not in args and "256" not in args, args
    assert router.chat("little").status_code == 200  # routed by alias


@deviation("U1")
def test_models_max_0_is_unlimited_with_load_on_startup(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    """Z17, section 6: --models-max 0 means unlimited everywhere, load-on-startup included."""
    (tmp_path / "empty").mkdir()
    preset = tmp_path / "models.ini"
    preset.write_text(f"[small]\nmodel = {tiny_models['tiny-xs'].path}\nload-on-startup = true\n")
    router = start_router("--models-max", "0", "--models-preset", str(preset),
                          models_dir=tmp_path / "empty")
    router.wait_status("small", "loaded")


def test_memory_budget_evicts_to_fit(start_router: Callable[..., Router], target: Any,
                                     tiny_models: Any) -> None:
    """Section 6: a model that does not fit the memory budget evicts an idle one."""
    if target.binary:
        pytest.skip("--device-memory is the reference router's switch")
    big, small = tiny_models["tiny-l"].size_bytes, tiny_models["tiny-m"].size_bytes
    budget = big + small // 2  # tiny-l fits alone, tiny-l and tiny-m do not fit together
    router = start_router("--models-max", "0", "--device-memory", f"host={budget}", "-c", "64")
    assert router.tracked("tiny-l")[0] == 200
    assert router.tracked("tiny-m")[0] == 200
    router.events.wait_for("tiny-l", "unloaded", timeout=30)
    router.wait_status("tiny-l", "unloaded")
    statuses = {name: m["status"]["value"] for name, m in router.models().items()}
    assert statuses["tiny-m"] == "loaded" and statuses["tiny-l"] == "unloaded", statuses
    router.check(models_max=0)


def test_reload_adds_new_models_and_unloads_vanished_ones(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    """Section 4: GET /models?reload=1 adds new models, unloads vanished running ones."""
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
    """Section 3: --sleep-idle-seconds reaches the children; a request wakes a sleeping model."""
    router = start_router("--sleep-idle-seconds", "1")
    assert router.tracked("tiny-xs")[0] == 200
    router.events.wait_for("tiny-xs", "sleeping", timeout=15)
    assert router.tracked("tiny-xs")[0] == 200  # a request wakes it
    router.events.wait_for("tiny-xs", "loaded", timeout=15)
    router.check(models_max=4)


def test_reload_with_a_name_of_two_models_keeps_the_catalog(
        start_router: Callable[..., Router], target: Any, tiny_models: Any,
        tmp_path: Path) -> None:
    """Section 4: a reload that would give one name to two models answers 400 with a message and
    leaves the previous catalog in force; a reload after the file is fixed answers 200"""
    if target.binary:
        pytest.skip("the answer to a broken reload is the reference router's (issue 12)")
    (tmp_path / "empty").mkdir()
    model = tiny_models["tiny-xs"].path
    preset = tmp_path / "models.ini"
    preset.write_text(f"[a]\nmodel = {model}\nalias = first\n\n[b]\nmodel = {model}\n")
    router = start_router("--models-preset", str(preset), models_dir=tmp_path / "empty")
    assert set(router.models()) == {"a", "b"}
    preset.write_text(f"[a]\nmodel = {model}\nalias = first\n\n[b]\nmodel = {model}\n"
                      f"alias = first\n\n[c]\nmodel = {model}\n")
    for _ in range(2):  # and again: a refused reload leaves nothing half-done behind
        r = router.client.get("/models", params={"reload": "1"}, headers=router.headers)
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "first" in message and "[b]" in message, message
    models = router.models()
    assert set(models) == {"a", "b"} and models["b"]["aliases"] == [], models
    assert router.chat("first").status_code == 200  # still routed to a
    assert router.status("a") == "loaded"
    preset.write_text(f"[a]\nmodel = {model}\nalias = first\n\n[b]\nmodel = {model}\n"
                      f"alias = second\n\n[c]\nmodel = {model}\n")
    r = router.client.get("/models", params={"reload": "1"}, headers=router.headers)
    assert r.status_code == 200, r.text
    models = {m["id"]: m for m in r.json()["data"]}
    assert set(models) == {"a", "b", "c"} and models["b"]["aliases"] == ["second"], models
