"""The trace picture: valid SVG, one bar per child, one marker per eviction, violations shown; a
run with many loads drawn in detail over a stretch that fits, under a strip of the whole run."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import pytest

from refimpl.core import (ChildExited, ClientGone, Forward, Kill, ModelSpec, Publish, Reply,
                          RequestArrived, ResponseEnded, RouterConfig, SendExit, Spawn,
                          UnloadAsked)
from refimpl.core.trace import At
from simulator import FAULT_PRESETS, Simulation, make_workload
from simulator.cli import RunSpec, build_parser
from simulator.plot import (DETAIL_PX, LEFT, MAX_POINTS, PLOT_W, TITLE_CHAR_W, detail_window,
                            render_svg)


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
    root = parse(render_svg(trace, cfg, "sample", window="all"))
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
    root = parse(render_svg(trace, cfg, window="all"))
    assert evictions > 10
    assert len(by_class(root, "eviction")) == evictions
    assert any(f"{evictions} evictions" in t for t in texts(root))


def test_sample_draws_every_request(sample: tuple[list[At], RouterConfig, int]) -> None:
    trace, cfg, _ = sample
    root = parse(render_svg(trace, cfg, window="all"))
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


# -- many loads: a stretch in detail, the whole run in a strip ---------------------------------

SVG = "{http://www.w3.org/2000/svg}"


def cli_run(*argv: str) -> tuple[list[At], RouterConfig, str]:
    """The trace, config and title of ``python -m simulator run ARGV``."""
    spec = RunSpec(build_parser().parse_args(["run", *argv]))
    sim = spec.simulation(0, record=True)
    result = sim.run()
    assert result.trace is not None
    return result.trace, sim.config, spec.replay_command(0)


@pytest.fixture(scope="module")
def default_run() -> tuple[list[At], RouterConfig, str]:
    return cli_run()  # 10 minutes, 8 models, 2 slots: about 400 loads


def bar_extent(child: ET.Element) -> tuple[float, float]:
    rects = [r for r in child if r.tag == f"{SVG}rect"]
    xs = [float(r.get("x", 0)) for r in rects]
    return min(xs), max(float(r.get("x", 0)) + float(r.get("width", 0)) for r in rects)


def test_many_loads_are_drawn_over_a_stretch_where_bars_are_wide_enough(
        default_run: tuple[list[At], RouterConfig, str]) -> None:
    trace, cfg, title = default_run
    spawns = [a for a in trace if isinstance(a.what, Spawn)]
    window = detail_window(trace, cfg)
    assert window is not None and len(spawns) > 300
    t0, t1 = window
    assert t0 == trace[0].t and t1 - t0 >= 30
    root = parse(render_svg(trace, cfg, title))
    children = by_class(root, "child")
    widths = [b - a for a, b in map(bar_extent, children)]
    assert 10 < len(children) <= cfg.models_max * PLOT_W / DETAIL_PX
    assert sum(widths) / len(children) >= 20, widths  # the whole run's would be under 6 px
    # Every bar lies within the plot, and every eviction of the stretch has its mark.
    assert all(LEFT - 0.01 <= a and b <= LEFT + PLOT_W + 0.01
               for a, b in map(bar_extent, children))
    titles = [e.findtext(f"{SVG}title") or "" for e in by_class(root, "eviction")]
    assert titles and all(t0 <= float(t.split(" evicted at ")[1].split()[0]) <= t1
                          for t in titles)
    # The strip shows the whole run, with the stretch shaded where it lies.
    assert len(by_class(root, "overview")) == 1
    shade = by_class(root, "overview-window")[0]
    span = trace[-1].t - trace[0].t
    assert float(shade.get("x", 0)) == pytest.approx(LEFT, abs=0.1)
    assert float(shade.get("width", 0)) == pytest.approx(PLOT_W * (t1 - t0) / span, abs=0.2)
    summary = " ".join(texts(root))
    assert f"{len(spawns)} loads" in summary and f"with {len(children)} of the" in summary


def test_the_detail_window_can_be_chosen_or_turned_off(
        default_run: tuple[list[At], RouterConfig, str]) -> None:
    trace, cfg, _ = default_run
    root = parse(render_svg(trace, cfg, window=(120.0, 150.0)))
    alive = [c for c in by_class(root, "child")]
    requests = [a for a in trace if isinstance(a.what, RequestArrived) and 120 <= a.t <= 150]
    drawn = sum(len(list(g)) for kind in ("ok", "error", "gone", "lost")
                for g in by_class(root, f"requests-{kind}"))
    assert alive and drawn == len(requests)
    assert "2:00" in " ".join(texts(root)) and by_class(root, "overview")
    whole = parse(render_svg(trace, cfg, window="all"))
    assert not by_class(whole, "overview")
    assert len(by_class(whole, "child")) == sum(1 for a in trace if isinstance(a.what, Spawn))
    with pytest.raises(ValueError, match="not within the run"):
        render_svg(trace, cfg, window=(5000.0, 6000.0))


def test_a_short_ab_run_is_drawn_whole() -> None:
    """The README's example picture: every load of a one-minute A/B run on one slot."""
    trace, cfg, title = cli_run("--workload", "ab", "--models", "2", "--models-max", "1",
                                "--duration", "1m")
    assert detail_window(trace, cfg) is None
    root = parse(render_svg(trace, cfg, title))
    assert not by_class(root, "overview")
    assert len(by_class(root, "child")) == sum(1 for a in trace if isinstance(a.what, Spawn))


def test_a_long_title_is_wrapped_within_the_picture(
        default_run: tuple[list[At], RouterConfig, str]) -> None:
    trace, cfg, title = default_run
    assert len(title) * TITLE_CHAR_W > PLOT_W  # the replay command: too long for one line
    root = parse(render_svg(trace, cfg, title))
    lines = [el.text or "" for el in root.iter(f"{SVG}text") if el.get("font-size") == "17"]
    assert len(lines) >= 2 and " ".join(lines) == title
    assert all(len(line) * TITLE_CHAR_W <= PLOT_W for line in lines)
    # An option stays with its value.
    assert not any(line.split()[-1].startswith("--") for line in lines)
