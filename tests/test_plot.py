"""The trace picture: valid SVG, one bar per child, one marker per eviction, violations shown."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import pytest

from refimpl.core import (ChildExited, ClientGone, Forward, Kill, ModelSpec, Publish, Reply,
                          RequestArrived, ResponseEnded, RouterConfig, SendExit, Spawn,
                          UnloadAsked)
from refimpl.core.trace import At
from simulator import FAULT_PRESETS, Simulation, make_workload
from simulator.plot import MAX_POINTS, render_svg


def by_class(root: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in root.iter() if el.get("class") == name]


def texts(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter() if el.tag.endswith("}text")]


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    return root


@pytest.fixture(scope="module")
def sample() -> tuple[list[At], RouterConfig, int]:
    w = make_workload("zipf", 5, 1.0)
    cfg = RouterConfig(models=tuple(ModelSpec(n) for n in w.model_names()), models_max=2)
    r = Simulation(cfg, w, FAULT_PRESETS["light"], random.Random(1), duration=300).run()
    assert r.trace is not None
    return r.trace, cfg, r.summary.evictions


def config(*names: str, models_max: int = 2) -> RouterConfig:
    return RouterConfig(models=tuple(ModelSpec(n) for n in names), models_max=models_max)


def test_sample_is_svg_with_one_bar_per_spawn(sample: tuple[list[At], RouterConfig, int]) -> None:
    trace, cfg, _ = sample
    root = parse(render_svg(trace, cfg, "sample"))
    spawns = sum(1 for a in trace if isinstance(a.what, Spawn))
    assert spawns > 10
    children = by_class(root, "child")
    assert len(children) == spawns
    # Each bar names its model and its times, for people hovering and for tests.
    titles = [child.find("{http://www.w3.org/2000/svg}title") for child in children]
    assert all(t is not None and t.text and "spawned" in t.text for t in titles)
    assert not by_class(root, "over-limit")
    assert "sample" in texts(root)


def test_sample_marks_each_eviction(sample: tuple[list[At], RouterConfig, int]) -> None:
    trace, cfg, evictions = sample
    root = parse(render_svg(trace, cfg))
    assert evictions > 10
    assert len(by_class(root, "eviction")) == evictions
    assert any(f"{evictions} evictions" in t for t in texts(root))


def test_sample_draws_every_request(sample: tuple[list[At], RouterConfig, int]) -> None:
    trace, cfg, _ = sample
    root = parse(render_svg(trace, cfg))
    requests = sum(1 for a in trace if isinstance(a.what, RequestArrived))
    drawn = sum(len(list(g)) for kind in ("ok", "error", "gone", "lost")
                for g in by_class(root, f"requests-{kind}"))
    assert drawn == requests


def test_more_children_than_slots_get_an_over_limit_lane() -> None:
    trace = [At(0.0, Spawn(1, "a")), At(1.0, Spawn(2, "b")), At(2.0, Spawn(3, "c"))]
    root = parse(render_svg(trace, config("a", "b", "c")))
    assert len(by_class(root, "over-limit")) == 1
    assert "over limit" in texts(root)
    over = [c for c in by_class(root, "child")
            if "OVER LIMIT" in (c.findtext("{http://www.w3.org/2000/svg}title") or "")]
    assert len(over) == 1 and "c (child 3)" in (over[0].findtext(
        "{http://www.w3.org/2000/svg}title") or "")


def test_a_freed_slot_is_reused_without_over_limit() -> None:
    trace = [At(0.0, Spawn(1, "a")), At(1.0, Spawn(2, "b")), At(2.0, SendExit(1)),
             At(2.5, ChildExited(1, 0)), At(2.5, Spawn(3, "c"))]
    root = parse(render_svg(trace, config("a", "b", "c")))
    assert len(by_class(root, "child")) == 3
    assert by_class(root, "over-limit") == []


def test_unlimited_uses_as_many_lanes_as_children_alive_at_once() -> None:
    trace = [At(0.0, Spawn(1, "a")), At(1.0, Spawn(2, "b")), At(2.0, Spawn(3, "c"))]
    root = parse(render_svg(trace, config("a", "b", "c", models_max=0)))
    lanes = [t for t in texts(root) if t.startswith("slot ")]
    assert lanes == ["slot 1", "slot 2", "slot 3"]
    assert by_class(root, "over-limit") == []


def test_unload_is_not_an_eviction_and_a_kill_after_exit_is_one_stop() -> None:
    trace = [At(0.0, Spawn(1, "a")), At(1.0, Publish("a", "status_change", {"status": "loaded"})),
             At(2.0, Spawn(2, "b")), At(3.0, Publish("b", "status_change", {"status": "loaded"})),
             At(4.0, UnloadAsked(90, "a")), At(4.0, SendExit(1)),
             At(4.1, ChildExited(1, 0)),
             At(5.0, RequestArrived(1, "c")), At(5.0, SendExit(2)),
             At(15.0, Kill(2)), At(15.0, ChildExited(2, -9)), At(15.0, Spawn(3, "c"))]
    root = parse(render_svg(trace, config("a", "b", "c")))
    assert len(by_class(root, "eviction")) == 1
    assert len(by_class(root, "child")) == 3


def test_outcomes_are_told_apart() -> None:
    trace = [At(0.0, Spawn(1, "a")),
             At(0.0, RequestArrived(1, "a")), At(0.0, RequestArrived(2, "a")),
             At(0.0, RequestArrived(3, "a")), At(0.0, RequestArrived(4, "a")),
             At(0.0, RequestArrived(5, "a")),
             At(1.0, Publish("a", "status_change", {"status": "loaded"})),
             At(1.0, Forward(1, "a", 1)), At(1.0, Forward(2, "a", 1)),
             At(2.0, ResponseEnded(1, ok=True)), At(2.0, ResponseEnded(2, ok=False)),
             At(2.0, Reply(3, 503, "model_load_failed")), At(2.0, ClientGone(4))]
    root = parse(render_svg(trace, config("a")))
    counts = {kind: sum(len(list(g)) for g in by_class(root, f"requests-{kind}"))
              for kind in ("ok", "error", "gone", "lost")}
    assert counts == {"ok": 1, "error": 2, "gone": 1, "lost": 1}


def test_many_requests_are_thinned_and_the_summary_says_so() -> None:
    n = 3 * MAX_POINTS - 1  # with the unanswered one: 15000 requests, so every 3rd is kept
    trace = [At(0.0, Spawn(1, "a"))]
    for i in range(n):
        trace += [At(i * 0.1, RequestArrived(i, "a")), At(i * 0.1, Forward(i, "a", 1)),
                  At(i * 0.1 + 0.05, ResponseEnded(i))]
    trace.append(At(n * 0.1, RequestArrived(n, "a")))  # never answered: always drawn
    root = parse(render_svg(trace, config("a")))
    ok = sum(len(list(g)) for g in by_class(root, "requests-ok"))
    lost = sum(len(list(g)) for g in by_class(root, "requests-lost"))
    assert ok == MAX_POINTS  # every 3rd of the 14999 served ones
    assert lost == 1
    assert any("1 in 3" in t for t in texts(root))


def test_empty_trace_renders() -> None:
    root = parse(render_svg([], config("a", "b"), "nothing"))
    assert by_class(root, "child") == []
    assert by_class(root, "eviction") == []
    assert "no requests in this trace" in texts(root)
    assert [t for t in texts(root) if t.startswith("slot ")] == ["slot 1", "slot 2"]


def test_trace_without_requests_renders() -> None:
    trace = [At(0.0, Spawn(1, "a")), At(3.0, Publish("a", "status_change", {"status": "loaded"}))]
    root = parse(render_svg(trace, config("a", models_max=0)))
    assert len(by_class(root, "child")) == 1
    assert "no requests in this trace" in texts(root)
