"""ROUTER.md 7, readiness for other backends: a child that does not speak the line protocol
(preset ``child-cmd`` with ``health = /health``) is ready when that endpoint answers 200, asked
every 200 ms; one that never does is killed at its load timeout, and its load fails; its exit
is still an exit. The backend here is fixtures/health_child.py (503 while it loads, then 200)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

from fixtures.procs import children_of
from refimpl.router.sources import SourceError, load_sources

from .routers import Router, Target

pytestmark = pytest.mark.live


@pytest.fixture(autouse=True)
def reference_only(target: Target) -> None:
    if target.binary:
        pytest.skip("ROUTER.md 7's policies are the reference router's (llama-server has none)")
FOREIGN = "{python} -m fixtures.health_child"


@pytest.fixture
def start(start_router: Callable[..., Router], tmp_path: Path) -> Callable[[str], Router]:
    """A reference router on ``preset`` alone (an empty models folder beside it)."""
    def run(preset: str) -> Router:
        path = tmp_path / "models.ini"
        path.write_text(preset)
        empty = tmp_path / "no-models"
        empty.mkdir(exist_ok=True)
        return start_router("--models-preset", str(path), "--stop-timeout", "1",
                            models_dir=empty)

    return run


def section(name: str, model: Path, load_seconds: float, extra: str = "") -> str:
    return (f"[{name}]\nmodel = {model}\nchild-cmd = {FOREIGN} --load-seconds {load_seconds}\n"
            f"health = /health\n{extra}")


def test_a_backend_is_ready_when_its_health_answers_200(start: Callable[[str], Router],
                                                        tiny_models: Any) -> None:
    router = start(section("foreign", tiny_models["tiny-xs"].path, 1.5))
    assert router.client.post("/models/load", json={"model": "foreign"}).status_code == 200
    # Its /health says 503 for 1.5 s after it starts: it cannot be ready yet, whatever the
    # machine's speed (a slower start only makes it later).
    assert router.status("foreign") == "loading", router.log()
    r = router.chat("foreign")  # waits for the load
    assert r.status_code == 200, r.text + router.log()
    assert r.json()["choices"][0]["message"]["content"] == "hello from foreign"
    assert router.status("foreign") == "loaded"
    assert "ready when /health answers 200" in router.log()


def test_a_backend_never_healthy_fails_its_load_at_the_timeout(start: Callable[[str], Router],
                                                                tiny_models: Any) -> None:
    router = start(section("stuck", tiny_models["tiny-xs"].path, -1, "load-timeout = 1\n"))
    r = router.chat("stuck")
    assert r.status_code == 503, r.text
    assert "not healthy at /health within 1 s: killed" in router.log()
    assert router.status("stuck") in ("unloaded", "failed"), router.status("stuck")
    deadline = time.monotonic() + 30
    while children_of(router.proc.pid):
        assert time.monotonic() < deadline, "the killed backend is still there"
        time.sleep(0.05)


def test_a_backend_and_a_protocol_child_side_by_side(start: Callable[[str], Router],
                                                     tiny_models: Any) -> None:
    preset = section("foreign", tiny_models["tiny-xs"].path, 0.2) + \
        f"\n[tiny-xs]\nmodel = {tiny_models['tiny-xs'].path}\n"
    router = start(preset)
    for model in ("foreign", "tiny-xs", "foreign"):
        r = router.chat(model)
        assert r.status_code == 200, (model, r.text)


@pytest.mark.parametrize("line, why", [("health = health", "a path such as /health"),
                                       ("child-cmd = ", "child-cmd: empty"),
                                       ("load-timeout = soon", "load-timeout")])
def test_bad_backend_keys_are_one_clear_error(tmp_path: Path, tiny_models: Any, line: str,
                                              why: str) -> None:
    preset = tmp_path / "models.ini"
    preset.write_text(f"[m]\nmodel = {tiny_models['tiny-xs'].path}\n{line}\n")
    with pytest.raises(SourceError, match=why):
        load_sources(None, str(preset), [], tmp_path / "cache")
