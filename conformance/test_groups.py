"""ROUTER.md section 7, groups, against the reference router started from its command: members
of one group run together, a model outside it waits until they have exited (an idle one is
asked to exit at once, a busy one drains), a swap group runs one member at a time, and a reload
that changes a model's group is published on ``/models/sse``. llama-server has no groups: on a
``--router-bin`` target each test is reported n/a (skipped), as in ``test_policies.py``.

Each test ends by checking the router's own trace (``--trace``, written when it stops) against
every guarantee, the groups' included (``properties.invariants.check_all``)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest

from properties.invariants import check_all
from refimpl.core.commands import Listed
from refimpl.core.config import Group, ModelSpec, RouterConfig
from refimpl.core.events import CatalogChanged
from refimpl.router.tracefile import read_trace

from .routers import Router, Target

pytestmark = pytest.mark.live
A1, A2, B = "tiny-xs", "tiny-m", "tiny-s"  # models-dir models; the preset gives them groups


@pytest.fixture(autouse=True)
def reference_only(target: Target) -> None:
    if target.binary:
        pytest.skip("ROUTER.md 7's groups are the reference router's (llama-server has none)")


def preset(tmp_path: Path, text: str) -> str:
    path = tmp_path / "groups.ini"
    path.write_text(text)
    return str(path)


def trace_holds(router: Router, trace: Path, groups: dict[str, Group], **config: Any) -> None:
    """Stop the router and check what its core did against every guarantee."""
    router.stop()
    entries = read_trace(trace)
    names = {at.what.model for at in entries if hasattr(at.what, "model")} - {None, "*"}
    names |= {view.name for at in entries if isinstance(at.what, Listed)
              for view in at.what.models}
    # What a reload read says what each model is started with (its launch): the same at the
    # start, but for the groups this test changed.
    read = {spec.name: spec for at in entries if isinstance(at.what, CatalogChanged)
            for spec in at.what.specs}
    specs = tuple(replace(read[n], group=groups.get(n)) if n in read
                  else ModelSpec(n, group=groups.get(n)) for n in sorted(names))
    violations = check_all(entries, RouterConfig(models=specs, **config))
    assert not violations, "\n".join(map(str, violations))


def test_an_outsider_waits_for_the_group_to_exit(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    """Section 7, groups: A1 and A2 (group chat) run together; a request for B (no group: its
    own) asks idle A2 to exit at once, waits while A1 streams, and is served once A1 has
    drained and exited; neither is reported failed. GET /models shows the group of A1 and A2
    only."""
    trace = tmp_path / "trace.pickle"
    chat = Group("chat")
    router = start_router("--models-max", "0", "--trace", str(trace), "--models-preset",
                          preset(tmp_path, f"[group:chat]\n[{A1}]\ngroup = chat\n"
                                           f"[{A2}]\ngroup = chat\n"))
    assert router.chat(A1).status_code == 200
    assert router.chat(A2).status_code == 200
    listed = router.models()
    assert listed[A1]["group"] == listed[A2]["group"] == "chat" and "group" not in listed[B]
    assert listed[A1]["status"]["value"] == listed[A2]["status"]["value"] == "loaded"
    held = router.hold(A1, tiny_models[A1].path)
    waiting = router.send(B)
    router.events.wait_for(A2, "unloaded", timeout=30)
    time.sleep(0.5)  # B would have started by now, were A1 not in its way
    assert router.status(A1) == "loaded" and router.status(B) == "unloaded"
    assert waiting.alive()
    assert held.release()[0] == 200
    assert waiting.join()[0] == 200
    listed = router.models()
    assert listed[B]["status"]["value"] == "loaded"
    for name in (A1, A2):
        status = listed[name]["status"]
        assert status["value"] == "unloaded" and not status.get("failed"), status
    trace_holds(router, trace, {A1: chat, A2: chat}, models_max=0)


def test_a_swap_group_runs_one_member_and_a_reload_publishes_a_group_change(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    """Section 7, swap groups: with A1 and A2 in a swap group, A2's request stops A1 first; a
    reload that moves A1 out of the group publishes ``group_change`` on /models/sse."""
    trace = tmp_path / "trace.pickle"
    swap = Group("pair", swap=True)
    path = preset(tmp_path, f"[group:pair]\nswap = true\n[{A1}]\ngroup = pair\n"
                            f"[{A2}]\ngroup = pair\n")
    router = start_router("--models-max", "0", "--trace", str(trace), "--models-preset", path)
    assert router.chat(A1).status_code == 200
    assert router.chat(A2).status_code == 200
    assert router.status(A1) == "unloaded" and router.status(A2) == "loaded"
    Path(path).write_text(f"[group:pair]\nswap = true\n[{A2}]\ngroup = pair\n")
    assert router.client.get("/models", params={"reload": "1"}).status_code == 200
    deadline = time.monotonic() + 10
    changes: list[dict[str, Any]] = []
    while not changes and time.monotonic() < deadline:
        with router.events.lock:
            changes = [m for _, m in router.events.items if m.get("event") == "group_change"]
        time.sleep(0.02)
    assert changes == [{"model": A1, "event": "group_change",
                        "data": {"group": None, "swap": False, "persistent": False}}], changes
    assert "group" not in router.models()[A1]
    trace_holds(router, trace, {A1: swap, A2: swap}, models_max=0)
