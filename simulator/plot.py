"""One trace drawn as a standalone SVG: children on their slots, request waits, evictions.

A run with more loads than the slots can show as bars (``DETAIL_PX`` each, on average) is drawn in
detail over its first stretch that fits, under a strip of the whole run: loads and evictions per
time bucket, and where requests failed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence
from xml.sax.saxutils import escape

from properties.replay import Replay
from refimpl.core.commands import Forward, Kill, Publish, Reply, SendExit, Spawn
from refimpl.core.config import RouterConfig
from refimpl.core.events import ChildExited, ClientGone, RequestArrived, ResponseEnded
from refimpl.core.trace import At

# No reds and no greens: red means a violation or an error, green a served request.
PALETTE = ("#4e79a7", "#f28e2b", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#a0cbe8", "#d4a6c8", "#8f8f3f")
OUTCOME_COLOURS = {"ok": "#3a9a4a", "error": "#d62728", "gone": "#9a9a9a", "lost": "#d62728"}
RED = "#d62728"
MAX_POINTS = 5000

WIDTH = 1200
LEFT = 96  # room for lane names and the wait axis ticks
RIGHT = 24
PLOT_W = WIDTH - LEFT - RIGHT
LANE_H = 28
LANE_GAP = 6
REQ_H = 220
PAD = 6
FONT = "font-family='Helvetica, Arial, sans-serif'"
CHAR_W = 6.6  # average glyph width at 12px, for layout without measuring text
TITLE_SIZE = 17
TITLE_CHAR_W = 0.6 * TITLE_SIZE  # bold glyphs, a little wide so that a wrapped line never clips
# Mean width a child's bar gets in the detail: below it, bars turn to slivers and the eviction
# marks above them (10 px wide) to a solid row, so the detail is zoomed in until it holds.
DETAIL_PX = 30
OVERVIEW_H = 44
BUCKETS = 120  # at most, across the overview strip

Window = tuple[float, float] | Literal["auto", "all"]


@dataclass(slots=True)
class _Child:
    instance: int
    model: str
    lane: int
    spawned: float
    loaded: float | None = None
    stopped: float | None = None
    evicted: bool = False
    exited: float | None = None
    code: int | None = None


@dataclass(slots=True)
class _Request:
    arrived: float
    forwarded: float | None = None
    outcome: str | None = None  # "ok", "error", "gone"; None: never answered
    answered: float | None = None


@dataclass(slots=True)
class _Digest:
    """What the picture needs from a trace, gathered in one pass."""

    start: float = 0.0
    end: float = 1.0
    children: list[_Child] = field(default_factory=list)
    requests: list[_Request] = field(default_factory=list)
    lanes: int = 0
    over_lanes: int = 0
    models: list[str] = field(default_factory=list)


def _digest(trace: Sequence[At], config: RouterConfig) -> _Digest:
    d = _Digest(models=[spec.name for spec in config.models])
    if trace:
        d.start = trace[0].t
        d.end = trace[-1].t
    if d.end <= d.start:
        d.end = d.start + 1.0
    known = set(d.models)
    limit = config.models_max
    alive: dict[int, _Child] = {}
    loading: dict[str, _Child] = {}  # the child whose "loaded" Publish is still awaited
    busy: set[int] = set()
    requests: dict[int, _Request] = {}
    replay = Replay(config)  # why a child was stopped: the invariants' own reading
    for entry in trace:
        replay.step(entry)
        t, item = entry.t, entry.what
        kind = type(item)
        if kind is Spawn:
            assert isinstance(item, Spawn)
            lane = 0
            while lane in busy:
                lane += 1
            busy.add(lane)
            child = _Child(item.instance, item.model, lane, t)
            alive[item.instance] = child
            loading[item.model] = child
            d.children.append(child)
            if item.model not in known:
                known.add(item.model)
                d.models.append(item.model)
        elif kind is Publish:
            assert isinstance(item, Publish)
            if item.data.get("status") == "loaded":
                waiting = loading.pop(item.model, None)
                if waiting is not None and waiting.loaded is None:
                    waiting.loaded = t
        elif kind is SendExit or kind is Kill:
            assert isinstance(item, (SendExit, Kill))
            stopping = alive.get(item.instance)
            # A Kill after an unanswered SendExit is the same stop, not a second one.
            if stopping is not None and stopping.stopped is None:
                stopping.stopped = t
                stopping.evicted = replay.every_child[item.instance].stop == "evicted"
        elif kind is ChildExited:
            assert isinstance(item, ChildExited)
            gone = alive.pop(item.instance, None)
            if gone is not None:
                gone.exited, gone.code = t, item.code
                busy.discard(gone.lane)
                if loading.get(gone.model) is gone:
                    del loading[gone.model]
        elif kind is RequestArrived:
            assert isinstance(item, RequestArrived)
            request = _Request(t)
            requests[item.req] = request
            d.requests.append(request)
        elif kind is Forward:
            assert isinstance(item, Forward)
            request_ = requests.get(item.req)
            if request_ is not None and request_.forwarded is None:
                request_.forwarded = t
        elif kind is ResponseEnded:
            assert isinstance(item, ResponseEnded)
            _answer(requests, item.req, t, "ok" if item.ok else "error")
        elif kind is Reply:
            assert isinstance(item, Reply)
            _answer(requests, item.req, t, "ok" if 200 <= item.status < 300 else "error")
        elif kind is ClientGone:
            assert isinstance(item, ClientGone)
            _answer(requests, item.req, t, "gone")
    top = max((c.lane for c in d.children), default=-1) + 1
    if limit > 0:
        d.lanes, d.over_lanes = limit, max(0, top - limit)
    else:
        d.lanes = max(1, top)
    return d


def _answer(requests: dict[int, _Request], req: int, t: float, outcome: str) -> None:
    # Only the first answer counts; a second one is a bug the properties report, not the plot.
    request = requests.pop(req, None)
    if request is not None:
        request.outcome, request.answered = outcome, t


# -- scales and ticks ---------------------------------------------------------------------------

_TIME_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 20, 30, 60,
               120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _time_ticks(start: float, end: float) -> tuple[list[float], str]:
    """About nine round ticks, and the unit they are written in."""
    span = end - start
    step = min(_TIME_STEPS, key=lambda s: abs(span / s - 9))
    if span / step > 12:  # beyond the longest round step (weeks): unround ticks beat 100 of them
        step = span / 9
    first = math.ceil(start / step - 1e-9) * step
    n = int((end - first) / step + 1e-9) + 1
    ticks = [first + i * step for i in range(n)]
    unit = "s" if span <= 180 or step < 1 else ("m:ss" if span <= 3600 else "h:mm")
    return ticks, unit


def _fmt_time(t: float, unit: str) -> str:
    if unit == "s":
        return f"{t:g} s" if abs(t) >= 0.001 or t == 0 else f"{t:.3g} s"
    sign, t = ("-" if t < 0 else ""), abs(round(t))
    if unit == "m:ss":
        return f"{sign}{t // 60}:{t % 60:02d}"
    return f"{sign}{t // 3600}:{t // 60 % 60:02d}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fmt_seconds(s: float) -> str:
    """A duration for a tooltip: seconds with a sensible precision."""
    return f"{s:.3f} s" if s < 10 else f"{s:.1f} s"


def _wait_ticks(top: float, sqrt: bool, px: float) -> list[float]:
    """Round wait values for an axis of ``px`` pixels reaching ``top`` seconds."""
    if top <= 0:
        return [0.0]
    if not sqrt:
        step = min((m * 10.0 ** e for e in range(-4, 7) for m in (1, 2, 5)
                    if top / (m * 10.0 ** e) <= 6), default=top)
        return [i * step for i in range(int(top / step + 1e-9) + 1)]
    # On a sqrt axis even steps crowd the top; take 1-2-5 values from the top down instead and
    # keep each one only if it lands far enough from those already kept.
    ticks, at = [0.0], [0.0]
    for e in range(math.floor(math.log10(top)), -5, -1):
        for m in (5, 2, 1):
            v = m * 10.0 ** e
            y = math.sqrt(v / top) * px
            if v <= top and all(abs(y - a) >= 18 for a in at):
                ticks.append(v)
                at.append(y)
    return sorted(ticks)


# -- SVG pieces -----------------------------------------------------------------------------


def _n(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "start",
          fill: str = "#222", extra: str = "") -> str:
    return (f"<text x='{_n(x)}' y='{_n(y)}' font-size='{size}' text-anchor='{anchor}' "
            f"fill='{fill}'{extra}>{escape(s)}</text>")


def _darker(colour: str, f: float) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"#{int(r * f):02x}{int(g * f):02x}{int(b * f):02x}"


def _mix(colour: str, f: float) -> str:
    """``colour`` at opacity ``f`` over white, as an opaque colour."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"#{round(255 - (255 - r) * f):02x}{round(255 - (255 - g) * f):02x}" \
           f"{round(255 - (255 - b) * f):02x}"


def _ink_on(colour: str) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#1a1a1a"


def _patterns(key: str, colour: str) -> str:
    """Hatches for one colour: pale with white stripes (loading), dark with black (stopping)."""
    pale, dark = _mix(colour, 0.45), _darker(colour, 0.6)
    return (f"<pattern id='load-{key}' width='6' height='6' patternUnits='userSpaceOnUse' "
            f"patternTransform='rotate(45)'><rect width='6' height='6' fill='{pale}'/>"
            f"<rect width='3' height='6' fill='#fff' fill-opacity='0.6'/></pattern>"
            f"<pattern id='stop-{key}' width='4' height='4' patternUnits='userSpaceOnUse' "
            f"patternTransform='rotate(-45)'><rect width='4' height='4' fill='{dark}'/>"
            f"<rect width='2' height='4' fill='#000' fill-opacity='0.35'/></pattern>")


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    """One request point; the shape repeats the colour so outcomes read in greyscale too."""
    if kind == "ok":
        return f"<circle cx='{_n(x)}' cy='{_n(y)}' r='2.6' fill='{colour}' fill-opacity='0.75'/>"
    if kind == "gone":
        return (f"<rect x='{_n(x - 2.4)}' y='{_n(y - 2.4)}' width='4.8' height='4.8' "
                f"fill='{colour}' fill-opacity='0.8'/>")
    if kind == "error":
        return (f"<path d='M{_n(x - 3)},{_n(y - 3)}L{_n(x + 3)},{_n(y + 3)}M{_n(x - 3)},"
                f"{_n(y + 3)}L{_n(x + 3)},{_n(y - 3)}' stroke='{colour}' stroke-width='2'/>")
    return (f"<circle cx='{_n(x)}' cy='{_n(y)}' r='4' fill='none' stroke='{colour}' "
            f"stroke-width='1.8'/>")


def _eviction(x: float, y: float) -> str:
    return (f"<polygon points='{_n(x - 5)},{_n(y)} {_n(x + 5)},{_n(y)} {_n(x)},{_n(y + 8)}' "
            f"fill='{RED}' stroke='#fff' stroke-width='0.8'/>")


def _crash(x: float, y: float) -> str:
    return (f"<path d='M{_n(x - 4)},{_n(y - 4)}L{_n(x + 4)},{_n(y + 4)}M{_n(x - 4)},{_n(y + 4)}"
            f"L{_n(x + 4)},{_n(y - 4)}' stroke='#111' stroke-width='2.2'/>")


# -- what the detail shows --------------------------------------------------------------------


def _end_of(c: _Child, d: _Digest) -> float:
    return c.exited if c.exited is not None else d.end


def _children_in(d: _Digest, t0: float, t1: float) -> list[_Child]:
    """The children alive at some instant of [t0, t1]."""
    return [c for c in d.children if c.spawned <= t1 and _end_of(c, d) >= t0]


def detail_window(trace: Sequence[At], config: RouterConfig) -> tuple[float, float] | None:
    """The stretch of ``trace`` drawn in detail: None for the whole run when its bars average at
    least ``DETAIL_PX`` on the slots, else the longest round stretch from the start whose bars
    do (never under a second)."""
    return _detail_window(_digest(trace, config))


def _detail_window(d: _Digest) -> tuple[float, float] | None:
    lanes = d.lanes + d.over_lanes
    room = max(1, int(lanes * PLOT_W / DETAIL_PX))
    if len(d.children) <= room:
        return None
    fitting = [step for step in _TIME_STEPS if step >= 1 and step < d.end - d.start
               and len(_children_in(d, d.start, d.start + step)) <= room]
    return d.start, d.start + (max(fitting) if fitting else 1.0)


def wrap_title(title: str, width: float = PLOT_W) -> list[str]:
    """``title`` in lines that fit ``width`` pixels, broken between words; a command line's
    ``--option value`` stays on one line."""
    per_line = max(8, int(width / TITLE_CHAR_W))
    units: list[str] = []
    for word in title.split(" "):
        if units and units[-1].startswith("--") and " " not in units[-1] \
                and not word.startswith("-"):
            units[-1] += " " + word
        else:
            units.append(word)
    lines: list[str] = []
    for unit in units:
        # A word longer than a line is cut into lines of its own.
        for piece in [unit[i:i + per_line] for i in range(0, len(unit), per_line)] or [""]:
            if lines and len(lines[-1]) + 1 + len(piece) <= per_line:
                lines[-1] += " " + piece
            else:
                lines.append(piece)
    return lines


def _overview(d: _Digest, window: tuple[float, float], y: float) -> tuple[list[str], float]:
    """The whole run in a strip: loads and evictions per bucket, a red tick under each bucket
    where a request failed or was never answered, and the detail's window shaded. Returns the
    SVG pieces and the y below them."""
    t0, t1 = d.start, d.end
    span = t1 - t0
    bucket = min((s for s in _TIME_STEPS if span / s <= BUCKETS), default=span / BUCKETS)
    n = max(1, math.ceil(span / bucket - 1e-9))
    loads, evictions, failed = [0] * n, [0] * n, [0] * n

    def index(t: float) -> int:
        return min(n - 1, max(0, int((t - t0) / bucket)))

    for c in d.children:
        loads[index(c.spawned)] += 1
        if c.evicted and c.stopped is not None:
            evictions[index(c.stopped)] += 1
    for r in d.requests:
        if r.outcome in (None, "error"):
            failed[index(r.arrived)] += 1
    scale_x = PLOT_W / span

    def x_of(t: float) -> float:
        return LEFT + (t - t0) * scale_x

    out = [_text(LEFT - 8, y, "whole run", 13, "end", extra=" font-weight='bold'"),
           _text(LEFT, y, f"loads (grey) and evictions (red) per {_fmt_bucket(bucket)}, a red "
                 "tick where requests failed; shaded: the stretch drawn below", 11,
                 fill="#777")]
    y += 6
    top, bottom = y, y + OVERVIEW_H
    high = max(loads + evictions + [1])
    w0, w1 = (max(t0, window[0]), min(t1, window[1]))
    parts = [f"<g class='overview'><rect x='{LEFT}' y='{_n(top)}' width='{PLOT_W}' "
             f"height='{OVERVIEW_H}' fill='#fafafa' stroke='#ccc'/>",
             f"<rect class='overview-window' x='{_n(x_of(w0))}' y='{_n(top)}' "
             f"width='{_n(max(1.0, x_of(w1) - x_of(w0)))}' height='{OVERVIEW_H}' "
             f"fill='#4e79a7' fill-opacity='0.15' stroke='#4e79a7'/>"]
    bar_w = max(1.0, bucket * scale_x * 0.8)
    for i in range(n):
        x = x_of(t0 + i * bucket) + bucket * scale_x * 0.1
        # Side by side: a bucket's loads, then its evictions.
        for count, fill, at in ((loads[i], "#8c8c8c", 0.0), (evictions[i], RED, 0.5)):
            if count:
                h = count / high * (OVERVIEW_H - 4)
                parts.append(f"<rect x='{_n(x + bar_w * at)}' y='{_n(bottom - h)}' "
                             f"width='{_n(bar_w / 2)}' height='{_n(h)}' "
                             f"fill='{fill}'><title>{_fmt_bucket(bucket)} from "
                             f"{escape(_fmt_seconds(t0 + i * bucket))}: {loads[i]} loads, "
                             f"{evictions[i]} evictions</title></rect>")
        if failed[i]:
            parts.append(f"<rect class='overview-failed' x='{_n(x)}' y='{_n(bottom + 2)}' "
                         f"width='{_n(bar_w)}' height='4' fill='{RED}'><title>"
                         f"{_count(failed[i], 'request')} failed or never answered</title>"
                         f"</rect>")
    out.append("".join(parts) + "</g>")
    out.append(_text(LEFT - 6, top + 9, str(high), 10, "end", "#555"))
    out.append(_text(LEFT - 6, bottom, "0", 10, "end", "#555"))
    ticks, unit = _time_ticks(t0, t1)
    for tk in ticks:
        out.append(_text(x_of(tk), bottom + 18, _fmt_time(tk, unit), 10, "middle", "#555"))
    return out, bottom + 18


def _fmt_bucket(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# -- the picture ----------------------------------------------------------------------------


def render_svg(trace: Sequence[At], config: RouterConfig, title: str = "",
               window: Window = "auto") -> str:
    """The trace as one SVG document: title and summary; the whole run's strip when the detail
    is a stretch of it; slots, then request waits, in detail; the legend.

    ``window`` is what the detail shows: ``"auto"`` (``detail_window``), ``"all"``, or (from, to)
    in the trace's seconds; ValueError when that misses the run."""
    d = _digest(trace, config)
    shown: tuple[float, float] | None
    if window == "auto":
        shown = _detail_window(d)
    elif window == "all":
        shown = None
    else:
        w0, w1 = max(window[0], d.start), min(window[1], d.end)
        if not w0 < w1:
            raise ValueError(f"{_fmt_seconds(window[0])} to {_fmt_seconds(window[1])} is not "
                             f"within the run, which lasts from {_fmt_seconds(d.start)} to "
                             f"{_fmt_seconds(d.end)}")
        shown = None if w0 <= d.start and w1 >= d.end else (w0, w1)
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(d.models)}
    models_index = {m: str(i) for i, m in enumerate(d.models)}
    neutral = "#8c8c8c"  # legend swatches for the bar parts, so they are not read as one model
    defs = ("<defs>" + "".join(_patterns(models_index[m], colours[m]) for m in d.models)
            + _patterns("n", neutral) + "</defs>")
    t0, t1 = shown if shown is not None else (d.start, d.end)
    scale_x = PLOT_W / (t1 - t0)
    children = d.children if shown is None else _children_in(d, t0, t1)
    requests = d.requests if shown is None else [r for r in d.requests
                                                 if t0 <= r.arrived <= t1]

    def x_of(t: float) -> float:
        return LEFT + (min(max(t, t0), t1) - t0) * scale_x

    back: list[str] = []
    grid: list[str] = []
    out: list[str] = []
    y = 0.0

    # Title and summary.
    evictions = sum(1 for c in d.children if c.evicted)
    counts = {k: 0 for k in ("ok", "error", "gone", "lost")}
    for r in d.requests:
        counts[r.outcome or "lost"] += 1
    stride = math.ceil(len(requests) / MAX_POINTS) if len(requests) > MAX_POINTS else 1
    peak = max((c.lane for c in d.children), default=-1) + 1
    limit = str(config.models_max) if config.models_max else "unlimited"
    summary = (f"{_count(len(d.requests), 'request')} (ok {counts['ok']}, "
               f"errors {counts['error']}, client gone {counts['gone']}, "
               f"never answered {counts['lost']})  ·  {_count(len(d.children), 'load')}  ·  "
               f"{_count(evictions, 'eviction')}  ·  "
               f"models_max {limit}, peak {peak} alive")
    if stride > 1:
        summary += f"  ·  points: 1 in {stride} ok/gone requests shown"
    for line in wrap_title(title or "router trace"):
        y += TITLE_SIZE + 5
        out.append(_text(LEFT, y, line, TITLE_SIZE, extra=" font-weight='bold'"))
    y += 20
    out.append(_text(LEFT, y, summary, 12, fill="#444"))
    if not trace:
        out.append(_text(LEFT + PLOT_W, y, "(empty trace)", 12, "end", "#888"))
    y += 22
    if shown is not None:
        unit = _time_ticks(d.start, d.end)[1]
        evicted_here = sum(1 for c in children if c.evicted and c.stopped is not None
                           and t0 <= c.stopped <= t1)
        out.append(_text(LEFT, y - 4, f"drawn below: {_fmt_time(t0, unit)} to "
                         f"{_fmt_time(t1, unit)} of {_fmt_time(d.start, unit)} to "
                         f"{_fmt_time(d.end, unit)}, with {len(children)} of the "
                         f"{_count(len(d.children), 'load')}, {evicted_here} of the "
                         f"{_count(evictions, 'eviction')} and {len(requests)} of the "
                         f"{_count(len(d.requests), 'request')}", 12, fill="#444"))
        y += 22
        strip, y = _overview(d, shown, y)
        out.extend(strip)
        y += 28

    ticks, unit = _time_ticks(t0, t1)

    # Slots panel.
    out.append(_text(LEFT - 8, y, "slots", 13, "end", extra=" font-weight='bold'"))
    out.append(_text(LEFT, y, "one lane per slot; a bar is one child, from spawn to exit", 11,
                     fill="#777"))
    y += 8
    slots_top = y
    n_lanes = d.lanes + d.over_lanes
    lane_y = [slots_top + i * (LANE_H + LANE_GAP) for i in range(n_lanes)]
    slots_bottom = slots_top + n_lanes * (LANE_H + LANE_GAP) - LANE_GAP
    for i, ly in enumerate(lane_y):
        over = i >= d.lanes
        if over:
            back.append(f"<g class='over-limit'><title>over limit: more children alive than "
                       f"models_max={config.models_max}</title>"
                       f"<rect x='{LEFT}' y='{_n(ly - 2)}' width='{PLOT_W}' "
                       f"height='{LANE_H + 4}' fill='#fde3e3' stroke='{RED}' "
                       f"stroke-width='1.5'/>"
                       + _text(LEFT - 8, ly + LANE_H / 2 + 4, "over limit", 12, "end", RED,
                               " font-weight='bold'") + "</g>")
        else:
            back.append(f"<rect x='{LEFT}' y='{_n(ly)}' width='{PLOT_W}' height='{LANE_H}' "
                       f"fill='#f3f3f3'/>")
            out.append(_text(LEFT - 8, ly + LANE_H / 2 + 4, f"slot {i + 1}", 12, "end", "#555"))

    marks: list[str] = []
    for c in children:
        colour = colours[c.model]
        ly = lane_y[c.lane]
        over = c.lane >= d.lanes
        end = c.exited if c.exited is not None else t1
        x_a, x_z = x_of(c.spawned), x_of(end)
        loaded = c.loaded if c.loaded is not None else (c.stopped if c.stopped is not None
                                                          else end)
        x_l = x_of(min(max(loaded, c.spawned), end))
        x_s = x_of(c.stopped) if c.stopped is not None else x_z
        x_s = min(max(x_s, x_l), x_z)
        tip = [f"{c.model} (child {c.instance})", f"spawned {_fmt_seconds(c.spawned)}"]
        tip.append(f"loaded {_fmt_seconds(c.loaded)}" if c.loaded is not None else "never loaded")
        if c.stopped is not None:
            tip.append(f"{'evicted' if c.evicted else 'unloaded'} {_fmt_seconds(c.stopped)}")
        tip.append(f"exited {_fmt_seconds(c.exited)} (code {c.code})" if c.exited is not None
                   else "still running at trace end")
        if over:
            tip.append("OVER LIMIT")
        parts = [f"<g class='child'><title>{escape(', '.join(tip))}</title>"]
        h = _n(LANE_H)
        key = models_index[c.model]

        def part(x0: float, x1: float, fill: str) -> None:
            if x1 - x0 >= 0.1:  # thinner than that is invisible; leaving it out keeps files small
                parts.append(f"<rect x='{_n(x0)}' y='{_n(ly)}' width='{_n(x1 - x0)}' "
                             f"height='{h}' fill='{fill}'/>")

        if x_z - x_a < 1.5:
            # Too thin to show its phases: one sliver, so a child that lived an instant is seen.
            parts.append(f"<rect x='{_n(x_a)}' y='{_n(ly)}' width='1' height='{h}' "
                         f"fill='{colour}'/>")
        else:
            part(x_a, x_l, f"url(#load-{key})")
            part(x_l, x_s, colour)
            part(x_s, x_z, f"url(#stop-{key})")
        if over or x_z - x_a >= 3:
            # A thin white edge keeps back-to-back children of one model apart.
            parts.append(f"<rect x='{_n(x_a)}' y='{_n(ly)}' width='{_n(max(x_z - x_a, 1.0))}' "
                         f"height='{h}' fill='none' stroke='{RED if over else '#fff'}' "
                         f"stroke-width='{1.5 if over else 0.7}'/>")
        label_w = len(c.model) * CHAR_W + 6
        # The name goes where its ink reads: on the solid part, else on the pale loading part.
        if x_s - x_l >= label_w:
            parts.append(_text(x_l + 3, ly + LANE_H / 2 + 4, c.model, 11, fill=_ink_on(colour)))
        elif x_l - x_a >= label_w:
            parts.append(_text(x_a + 3, ly + LANE_H / 2 + 4, c.model, 11, fill="#1a1a1a"))
        parts.append("</g>")
        out.append("".join(parts))
        if c.stopped is not None and c.evicted and t0 <= c.stopped <= t1:
            marks.append(f"<g class='eviction'><title>{escape(c.model)} evicted at "
                         f"{escape(_fmt_seconds(c.stopped))}</title>"
                         + _eviction(x_of(c.stopped), ly - 3) + "</g>")
        elif c.stopped is None and c.exited is not None and c.code != 0 \
                and t0 <= c.exited <= t1:
            marks.append(f"<g class='crash'><title>{escape(c.model)} exited on its own at "
                         f"{escape(_fmt_seconds(c.exited))} (code {c.code})</title>"
                         + _crash(x_of(c.exited), ly + LANE_H / 2) + "</g>")
    out.extend(marks)
    y = slots_bottom + 34

    # Requests panel.
    out.append(_text(LEFT - 8, y, "requests", 13, "end", extra=" font-weight='bold'"))
    out.append(_text(LEFT, y, "one point per request at its arrival; height: time it waited "
                     "before being forwarded (or answered, or given up)", 11, fill="#777"))
    y += 10
    req_top, req_bottom = y, y + REQ_H
    waits: list[tuple[_Request, float]] = []
    for r in requests:
        done = r.forwarded if r.forwarded is not None else (
            r.answered if r.answered is not None else t1)
        waits.append((r, max(0.0, done - r.arrived)))
    top = max((w for _, w in waits), default=0.0)
    positive = [w for _, w in waits if w > 0]
    typical = sum(positive) / len(positive) if positive else 0.0
    # When a few waits dwarf the usual ones, a sqrt axis keeps both readable.
    use_sqrt = top > 0 and (typical == 0 or top / typical > 20)
    top = top * 1.05 if top > 0 else 1.0

    def y_of(w: float) -> float:
        f = math.sqrt(w / top) if use_sqrt else w / top
        # A few pixels of air so the many zero waits do not sit on the panel's frame.
        return req_bottom - PAD - f * (REQ_H - 2 * PAD)

    back.append(f"<rect x='{LEFT}' y='{_n(req_top)}' width='{PLOT_W}' height='{REQ_H}' "
                f"fill='#fafafa' stroke='#ccc'/>")
    for v in _wait_ticks(top, use_sqrt, REQ_H - 2 * PAD):
        py = y_of(v)
        grid.append(f"<line x1='{LEFT}' x2='{LEFT + PLOT_W}' y1='{_n(py)}' y2='{_n(py)}' "
                    f"stroke='#e2e2e2'/>")
        out.append(_text(LEFT - 6, py + 4, f"{v:g} s", 11, "end", "#555"))
    axis_label = "queue wait, s (√ scale)" if use_sqrt else "queue wait, s"
    mid = (req_top + req_bottom) / 2
    out.append(_text(16, mid, axis_label, 12, "middle", "#444",
                     f" transform='rotate(-90 16 {_n(mid)})'"))
    if not requests:
        out.append(_text(LEFT + PLOT_W / 2, mid, "no requests in this trace" if shown is None
                         else "no requests arrived in this stretch", 14, "middle", "#999"))
    by_kind: dict[str, list[str]] = {"ok": [], "gone": [], "error": [], "lost": []}
    drawn = {k: sum(1 for r in requests if (r.outcome or "lost") == k) for k in by_kind}
    seen = {k: 0 for k in by_kind}
    for r, w in waits:
        kind = r.outcome or "lost"
        seen[kind] += 1
        # Errors and lost requests are rare and are what a reader looks for: thin only the rest.
        if stride > 1 and kind in ("ok", "gone") and (seen[kind] - 1) % stride:
            continue
        if stride > 1 and kind in ("error", "lost") and drawn[kind] > MAX_POINTS // 4 \
                and (seen[kind] - 1) % stride:
            continue
        by_kind[kind].append(_marker(kind, x_of(r.arrived), y_of(w), OUTCOME_COLOURS[kind]))
    for kind in ("ok", "gone", "error", "lost"):
        if by_kind[kind]:
            out.append(f"<g class='requests-{kind}'>" + "".join(by_kind[kind]) + "</g>")
    y = req_bottom

    # Time axis, with its grid running through both panels so a load lines up with its waits.
    for tk in ticks:
        px = x_of(tk)
        grid.append(f"<line x1='{_n(px)}' x2='{_n(px)}' y1='{_n(slots_top - 4)}' "
                    f"y2='{_n(req_bottom)}' stroke='#d8d8d8' stroke-dasharray='2,3'/>")
        out.append(f"<line x1='{_n(px)}' x2='{_n(px)}' y1='{_n(y)}' y2='{_n(y + 5)}' "
                   f"stroke='#555'/>")
        out.append(_text(px, y + 18, _fmt_time(tk, unit), 11, "middle", "#333"))
    out.append(_text(LEFT + PLOT_W, y + 34, f"time ({unit})", 12, "end", "#444"))
    y += 52

    # Legend, wrapped into rows.
    items: list[tuple[str, str]] = []
    for m in d.models:
        items.append((f"<rect x='0' y='-10' width='18' height='12' fill='{colours[m]}'/>", m))
    items += [
        ("<rect x='0' y='-10' width='18' height='12' fill='url(#load-n)'/>", "loading"),
        (f"<rect x='0' y='-10' width='18' height='12' fill='{neutral}'/>", "loaded"),
        ("<rect x='0' y='-10' width='18' height='12' fill='url(#stop-n)'/>", "stopping"),
        (_eviction(9, -10), "eviction"),
        (_crash(9, -4), "crashed"),
        (f"<rect x='0' y='-11' width='18' height='14' fill='#fde3e3' stroke='{RED}' "
         f"stroke-width='1.5'/>", "over limit"),
        (_marker("ok", 9, -4, OUTCOME_COLOURS["ok"]), "served"),
        (_marker("error", 9, -4, OUTCOME_COLOURS["error"]), "error"),
        (_marker("gone", 9, -4, OUTCOME_COLOURS["gone"]), "client gone"),
        (_marker("lost", 9, -4, OUTCOME_COLOURS["lost"]), "never answered"),
    ]
    lx = float(LEFT)
    legend: list[str] = []
    for glyph, name in items:
        w = 24 + len(name) * CHAR_W + 18
        if lx + w > WIDTH - RIGHT:
            lx, y = float(LEFT), y + 20
        legend.append(f"<g transform='translate({_n(lx)},{_n(y)})'>{glyph}"
                      + _text(24, 0, name, 12) + "</g>")
        lx += w
    height = y + 16

    head = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{_n(height)}' "
            f"viewBox='0 0 {WIDTH} {_n(height)}' {FONT}>"
            f"<title>{escape(title or 'router trace')}</title>{defs}"
            f"<rect width='100%' height='100%' fill='#fff'/>")
    # Grid lines lie over the panel backgrounds but under everything drawn on them.
    return (head + "".join(back) + "<g class='grid'>" + "".join(grid) + "</g>" + "".join(out)
            + "".join(legend) + "</svg>\n")
