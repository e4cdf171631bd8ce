"""The guarantee of ROUTER.md section 7's groups, a plain function over a trace in the shape of
``properties/invariants.py`` (a walk over the one shared ``Replay``): ``GROUP_CHECKS`` lists
it; ``GroupChecking`` runs it beside every guarantee of ``invariants.CHECKS`` and
``policy_invariants.POLICY_CHECKS``.

The relation is stated here again, from the trace's specs alone, not imported from the
scheduler: a model *in the way* of a model M is one that must have exited before M's child
starts. Groups are in use once any model the trace knows names one (ROUTER.md 7: all off by
default); a model without one is then its own group. A model of another group is in M's way
unless its group is persistent; another member of M's own group is in its way only if that
group is ``swap``.

Some verdicts of the other guarantees read a group's own decisions as faults, because the
shared replay cannot yet tell them apart: a stop that makes way for another group (a
``SendExit`` that names it in ``group``) reads as an eviction that no count or memory needed,
or that passed over an idle model used less recently; a 503 ``pinned_models_full`` for a
pinned model in the group's way reads as a pin refusal with room left, with no cause; a
``group_change`` event
is not one of section 4's; a load answered 200 that a pinned model in its way then refuses
never starts. :func:`set_aside` drops exactly those (after ``policy_invariants.set_aside``);
``groups_held`` judges each. To need none: ``replay.Replay.stop_reason`` should call a first
stop with ``SendExit.group`` set ``"grouped"``, not ``"evicted"``; ``victim_is_lru`` and
``evictions_needed`` then pass it by, and ``pinned_never_evicted`` / ``errors_have_causes`` /
``events_well_formed`` should know the group refusal and ``group_change``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from refimpl.core import errors
from refimpl.core.commands import Publish, Reply, SendExit, Spawn
from refimpl.core.config import Group, RouterConfig
from refimpl.core.events import EVENT_TYPES
from refimpl.core.trace import At

from .invariants import CHECKS, LIVENESS, Check, Checking, Violation, Walk, Walker, _walks
from .policy_invariants import POLICY_CHECKS, Notes, crowded_out
from .policy_invariants import set_aside as policy_set_aside
from .replay import Child, Replay

GROUP_EVENT = "group_change"
GROUP_KEYS = {"group", "swap", "persistent"}


# -- what the trace says about groups -----------------------------------------------------------

def _group(replay: Replay, model: str) -> Group | None:
    spec = replay.specs.get(model)
    return spec.group if spec is not None else None


def groups_in_use(replay: Replay) -> bool:
    return any(spec.group is not None for spec in replay.specs.values())


def in_way(replay: Replay, model: str, other: str) -> bool:
    """``other`` must have exited before ``model`` starts (groups in use)."""
    if other == model or not groups_in_use(replay):
        return False
    mine, theirs = _group(replay, model), _group(replay, other)
    if mine is not None and theirs is not None and mine.name == theirs.name:
        return mine.swap
    return theirs is None or not theirs.persistent


def running_in_way(replay: Replay, model: str, *, stopping: bool = True) -> list[Child]:
    """The model children alive that are in ``model``'s way (those asked to stop too, unless
    ``stopping`` is False)."""
    return [c for c in replay.children.values() if not c.download
            and (stopping or c.stop is None) and in_way(replay, model, c.model)]


def pinned_in_way(replay: Replay, model: str) -> list[str]:
    """The pinned models running, not asked to stop, that are in ``model``'s way."""
    return sorted(c.model for c in running_in_way(replay, model, stopping=False)
                  if (spec := replay.specs.get(c.model)) is not None and spec.pin)


def group_event_problem(what: Publish) -> str | None:
    data = what.data
    if set(data) != GROUP_KEYS:
        return f"keys {sorted(data)}, not {sorted(GROUP_KEYS)}"
    if not ((data["group"] is None or isinstance(data["group"], str) and data["group"])
            and isinstance(data["swap"], bool) and isinstance(data["persistent"], bool)):
        return f"malformed {data!r}"
    if data["group"] is None and (data["swap"] or data["persistent"]):
        return f"no group, yet {data!r}"
    return None


# -- the guarantee ------------------------------------------------------------------------------

@_walks
def groups_held(config: RouterConfig, replay: Replay) -> Walk:
    """No group constraint is broken at any instant: a model's child starts only when no child
    of a model in its way is alive (a child asked to stop counts until it has exited): no model
    of another group unless that group is persistent, and in a swap group no other member. A
    stop made for a group (``SendExit.group``) stops only a model in the way of the model it
    names. A request or load refused because of pins (503 ``pinned_models_full``) that the
    pinned models' room does not explain is refused because a pinned model runs in its group's
    way, and the message names it. With no group anywhere this holds trivially."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, Spawn) and not what.download:
            way = running_in_way(replay, what.model)
            if way:
                names = ", ".join(f"{c.model} (instance {c.instance}"
                                  + (", asked to stop)" if c.stop is not None else ")")
                                  for c in way)
                group = _group(replay, what.model)
                out.append(Violation("groups_held", at.t, f"{what.model} (group "
                                     f"{group.name if group else 'of its own'}) started while "
                                     f"{names} still ran in its way"))
        elif isinstance(what, SendExit) and what.group is not None:
            child = replay.first_stop(what)
            if child is not None and not in_way(replay, what.group, child.model):
                out.append(Violation("groups_held", at.t, f"stopped {child.model} (instance "
                                     f"{child.instance}) to make way for {what.group}, whose "
                                     "group it is not in the way of"))
        elif isinstance(what, Reply) and what.kind == errors.PINNED_OUT:
            r = replay.requests.get(what.req)
            if r is None or crowded_out(replay, config, r.model):
                continue  # the pins' room explains it: policy_invariants judges it
            pinned = pinned_in_way(replay, r.model)
            if not pinned:
                out.append(Violation("groups_held", at.t, f"{r.kind} {r.req} for {r.model} "
                                     "refused for pins, but no pinned model is in its way "
                                     "and the pins leave it room"))
            elif not all(name in what.message for name in pinned):
                out.append(Violation("groups_held", at.t, f"{r.kind} {r.req} for {r.model} "
                                     f"refused with {what.message!r}, not naming {pinned}"))
    return out


GROUP_CHECKS: dict[str, Check] = {"groups_held": groups_held}


# -- the other guarantees with groups on --------------------------------------------------------

@dataclass
class GroupNotes:
    """What :func:`set_aside` needs to know of a trace: its group stops, its group refusals, its
    well-formed ``group_change`` events, and the loads that pinned models in the way refuse."""

    stops: set[tuple[float, str]] = field(default_factory=set)  # (time, model stopped)
    refused: set[int] = field(default_factory=set)  # 503 for a pinned model in the way
    events: set[tuple[float, str]] = field(default_factory=set)
    crowded: dict[str, list[float]] = field(default_factory=dict)  # asked model -> times

    def walker(self, config: RouterConfig, replay: Replay) -> Walk:
        while (at := (yield ())) is not None:
            what = at.what
            child = replay.first_stop(what)
            if child is not None and isinstance(what, SendExit) and what.group is not None:
                self.stops.add((at.t, child.model))
            elif isinstance(what, Reply) and what.kind == errors.PINNED_OUT:
                r = replay.requests.get(what.req)
                if r is not None and pinned_in_way(replay, r.model):
                    self.refused.add(r.req)
            elif isinstance(what, Publish) and what.event == GROUP_EVENT \
                    and group_event_problem(what) is None:
                self.events.add((at.t, what.model))
            elif isinstance(what, Spawn) or isinstance(what, EVENT_TYPES):
                for model in replay.asked:
                    if pinned_in_way(replay, model):
                        self.crowded.setdefault(model, []).append(at.t)
        return []


# The guarantees that judge a first stop caused by neither an API call nor a catalog change as
# an eviction for count or memory. (busy_never_evicted, no_thrash, loading_stops and
# pinned_never_evicted still judge a group stop: it must never stop a busy, loading or
# pinned model either.)
EVICTION_CHECKS = ("victim_is_lru", "evictions_needed")


def _names(model: str, detail: str) -> bool:
    return re.search(rf"(?<![\w./:-]){re.escape(model)}(?![\w./:-])", detail) is not None


def set_aside(violations: Iterable[Violation], notes: GroupNotes) -> list[Violation]:
    """``violations`` less those that read a group's own decision as a fault (see the module
    docstring); ``groups_held`` judges each of those."""
    kept = []
    for v in violations:
        if v.guarantee in EVICTION_CHECKS and any(
                t == v.t and re.match(rf"evicted {re.escape(model)} ", v.detail)
                for t, model in notes.stops):
            continue
        if v.guarantee == "pinned_never_evicted" and any(
                re.match(rf"\w+ {req} for .* refused for pins, but", v.detail)
                for req in notes.refused):
            continue
        if v.guarantee == "errors_have_causes" and any(
                re.match(rf"(request|API call \(load\)) {req} for ", v.detail)
                for req in notes.refused):
            continue
        if v.guarantee == "events_well_formed" and any(
                t == v.t and v.detail.startswith(f"{GROUP_EVENT} for {model!r}:")
                for t, model in notes.events):
            continue
        if v.guarantee == "api_calls_take_effect" and any(
                re.match(rf"load \d+ of {re.escape(model)} answered 200 but no child", v.detail)
                and any(t >= v.t for t in times) for model, times in notes.crowded.items()):
            continue
        if v.guarantee == "fifo_between_models" and any(
                v.t in times and re.search(rf"before {re.escape(model)} \(waiting", v.detail)
                for model, times in notes.crowded.items()):
            continue
        kept.append(v)
    return kept


class GroupChecking(Checking):
    """Every guarantee, ``invariants.CHECKS``, ``POLICY_CHECKS`` and ``GROUP_CHECKS``, over one
    trace fed as it grows (``invariants.Checking``'s interface); the verdicts of the former that
    are a policy's or a group's own business are set aside."""

    def __init__(self, config: RouterConfig, *, liveness: bool = True) -> None:
        walkers: dict[str, Walker] = {
            name: check.walker  # type: ignore[attr-defined]
            for name, check in {**CHECKS, **POLICY_CHECKS, **GROUP_CHECKS}.items()
            if liveness or name not in LIVENESS}
        self.notes = Notes()
        self.group_notes = GroupNotes()
        walkers["policy_notes"] = self.notes.walker
        walkers["group_notes"] = self.group_notes.walker
        super().__init__(config, walkers)

    def _kept(self, found: Iterable[Violation]) -> list[Violation]:
        return set_aside(policy_set_aside(found, self.notes), self.group_notes)

    def so_far(self) -> list[Violation]:
        for name, found in self._found.items():
            ended = self._ended.get(name)
            if isinstance(ended, Exception):
                raise ended
            kept = self._kept(found)
            if kept:
                return kept
        return []

    def finish(self, *, first_only: bool = False) -> list[Violation]:
        kept = self._kept(super().finish())
        if first_only and kept:
            return [v for v in kept if v.guarantee == kept[0].guarantee]
        return kept


def check_groups(trace: Sequence[At], config: RouterConfig, *, liveness: bool = True,
                 first_only: bool = False) -> list[Violation]:
    """``policy_invariants.check_policies`` with the groups' guarantee too."""
    checking = GroupChecking(config, liveness=liveness)
    checking.feed(trace)
    return checking.finish(first_only=first_only)
