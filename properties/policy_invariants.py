"""The guarantees of the router's own policies (ROUTER.md section 7: idle TTL, pin, per-model
concurrency, queue limit), each a plain function over a trace, in the shape of
``properties/invariants.py``: ``check(trace, config) -> list[Violation]``, written as a walk over
the one shared ``Replay``. ``POLICY_CHECKS`` lists them; ``PolicyChecking`` runs them beside
every guarantee of ``invariants.CHECKS``.

Some verdicts of ``invariants.CHECKS`` read the policies' own decisions as faults, because the
shared replay cannot yet tell them apart: a TTL unload (a ``SendExit`` marked ``expired``, caused
by ``TimerFired``) reads as an eviction that no waiting model needed; a 429 ``queue_full`` and a
503 ``pinned_models_full`` read as errors with no cause; a ``policy_change`` event is not one of
section 4's; a load answered 200 that pinned models then crowd out never starts; a pinned
model used less recently than the victim of an eviction reads as the LRU model passed over.
And ``bounded_wait`` gives a request that finds requests for its model open the place of the
oldest of them (it "joins their entry"); requests *in line* on a child at its concurrency are
in no entry: a request that comes while they wait and finds the model draining queues behind
the entry the drain is for, which may be newer than they are. Such a request's bound is set
aside (``Notes.behind_line``), and so is the bound of a request in line when its model's child
dies (it goes back to the queue at its arrival, behind entries that its bound did not count);
the bound in ``invariants._wait_bounds`` should take the place of open requests only for a
model with no usable child or no concurrency limit, and count the queue a line goes back to. Each of those
is judged here instead, and :func:`set_aside` drops exactly those verdicts (docs/POLICIES.md
says what to change in ``replay.py`` / ``invariants.py`` so that nothing need be set aside).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from refimpl.core import errors
from refimpl.core.commands import Forward, Publish, Reply, SendExit, Spawn
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.events import (EVENT_TYPES, CatalogChanged, ChildExited, ClientGone,
                                 RequestArrived)
from refimpl.core.trace import At

from .invariants import (CHECKS, LIVENESS, SLACK, Check, Checking, Violation, Walk, Walker,
                         _walks)
from .replay import Child, Replay

EPSILON = 1e-9  # a timer set for t fires at t: float sums may put it a hair before


# -- what the trace says about pins --------------------------------------------------------------

def _spec(replay: Replay, model: str) -> ModelSpec | None:
    return replay.specs.get(model)


def _pinned(replay: Replay, model: str) -> bool:
    spec = _spec(replay, model)
    return spec is not None and spec.pin


def pinned_running(replay: Replay, besides: str) -> list[Child]:
    """The pinned models' children that take room and are not asked to stop (but ``besides``'s)."""
    return [c for c in replay.children.values() if not c.download and c.stop is None
            and c.model != besides and _pinned(replay, c.model)]


def crowded_out(replay: Replay, config: RouterConfig, model: str) -> list[str]:
    """The pinned models that leave ``model`` no room whatever else stops (by count or on some
    device); ``[]`` when it fits beside them, or fits on no device at all (a 507)."""
    pinned = pinned_running(replay, model)
    spec = _spec(replay, model)
    need = dict(spec.memory) if spec is not None else {}
    if not pinned or replay.too_big(model):
        return []
    by_count = bool(config.models_max) and len(pinned) + 1 > config.models_max
    by_memory = any(sum(c.memory.get(d, 0) for c in pinned) + need.get(d, 0) > cap
                    for d, cap in config.devices.items())
    return sorted(c.model for c in pinned) if by_count or by_memory else []


def _expired(what: object) -> bool:
    return isinstance(what, SendExit) and what.expired


# -- the guarantees ------------------------------------------------------------------------------

@_walks
def pinned_never_evicted(config: RouterConfig, replay: Replay) -> Walk:
    """A pinned model is never an eviction victim (least recently used, drained or forced,
    whatever the policy); it may still be unloaded through the API, a catalog change or its own
    TTL. A request or load is refused because of pins (503 ``pinned_models_full``) only when
    the pinned models running leave its model no room whatever else stops, and the message
    names them."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        child = replay.first_stop(what)
        if child is not None and replay.stop_reason() == "evicted" and not _expired(what) \
                and _pinned(replay, child.model):
            out.append(Violation("pinned_never_evicted", at.t, f"evicted {child.model} "
                                 f"(instance {child.instance}), which is pinned"))
        if isinstance(what, Reply) and what.kind == errors.PINNED_OUT:
            r = replay.requests.get(what.req)
            if r is None:
                continue
            pinned = crowded_out(replay, config, r.model)
            if not pinned:
                running = sorted(c.model for c in pinned_running(replay, r.model))
                out.append(Violation("pinned_never_evicted", at.t, f"{r.kind} {r.req} for "
                                     f"{r.model} refused for pins, but the pinned models "
                                     f"running ({running}) leave it room"))
            elif what.status != 503 or not all(name in what.message for name in pinned):
                out.append(Violation("pinned_never_evicted", at.t, f"{r.kind} {r.req} for "
                                     f"{r.model} refused with {what.status} "
                                     f"{what.message!r}: not a 503 naming {pinned}"))
    return out


@_walks
def ttl_unloads_idle(config: RouterConfig, replay: Replay) -> Walk:
    """A model is unloaded for idleness (a ``SendExit`` marked ``expired``) only when it has a
    TTL (its own ``ttl``, else ``--models-ttl`` unless pinned), its child is ready, nothing is
    in flight on it or waits for it, and it was last used (a forward, a response's end, ready)
    at least its TTL ago. And a model idle for its TTL does not stay loaded: it is unloaded
    within SLACK of its deadline (counted from the catalog change that gave it its TTL, if that
    came later)."""
    out: list[Violation] = []
    late: set[int] = set()  # children already reported as overdue
    changed: dict[str, float] = {}  # model -> when a catalog change last altered its TTL

    def overdue(t: float) -> None:
        for child in replay.children.values():
            if child.instance in late or not replay.idle(child):
                continue
            spec = _spec(replay, child.model)
            ttl = config.ttl_of(spec) if spec is not None else 0.0
            since = max(replay.last_used.get(child.model, child.spawned),
                        changed.get(child.model, 0.0))
            if ttl and since + ttl + SLACK < t:
                late.add(child.instance)
                out.append(Violation("ttl_unloads_idle", since + ttl + SLACK, f"{child.model} "
                                     f"(instance {child.instance}) idle since t={since:.6g} "
                                     f"with a TTL of {ttl:.6g} s, still loaded at t={t:.6g}"))

    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, EVENT_TYPES):
            overdue(at.t)
        if isinstance(what, CatalogChanged):
            for new in what.specs:
                old = _spec(replay, new.name)
                if old is None or config.ttl_of(old) != config.ttl_of(new):
                    changed[new.name] = at.t
        child = replay.first_stop(what)
        if child is None or not _expired(what):
            continue
        spec = _spec(replay, child.model)
        ttl = config.ttl_of(spec) if spec is not None else 0.0
        since = replay.last_used.get(child.model, child.spawned)
        if not ttl:
            out.append(Violation("ttl_unloads_idle", at.t, f"{child.model} (instance "
                                 f"{child.instance}) unloaded as expired, but it has no TTL"))
        elif not replay.idle(child):
            busy = [r.req for r in replay.in_flight(child.instance)] \
                + [r.req for r in replay.open_for(child.model)]
            out.append(Violation("ttl_unloads_idle", at.t, f"{child.model} (instance "
                                 f"{child.instance}) unloaded for its TTL while not idle"
                                 + (f": requests {busy} in flight or waiting" if busy else
                                    " (loading, or a load asked)")))
        elif since + ttl > at.t + EPSILON:
            out.append(Violation("ttl_unloads_idle", at.t, f"{child.model} (instance "
                                 f"{child.instance}) unloaded for its TTL of {ttl:.6g} s, idle "
                                 f"only since t={since:.6g}"))
    overdue(replay.now)
    return out


@_walks
def concurrency_held(config: RouterConfig, replay: Replay) -> Walk:
    """At no instant are more requests in flight to a model's child than the model's
    ``concurrency`` (the spec in force when each is forwarded); the others wait."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        if not isinstance(what, Forward):
            continue
        spec = _spec(replay, what.model)
        limit = spec.concurrency if spec is not None else 0
        flight = [r.req for r in replay.in_flight(what.instance) if r.req != what.req]
        if limit and len(flight) >= limit:
            out.append(Violation("concurrency_held", at.t, f"request {what.req} forwarded to "
                                 f"{what.model} (instance {what.instance}) with {flight} in "
                                 f"flight; its concurrency is {limit}"))
    return out


@_walks
def queue_limit_held(config: RouterConfig, replay: Replay) -> Walk:
    """With ``--queue-max N``, at no instant do more than N requests wait (arrived, neither
    forwarded nor answered, client still there); a request is answered 429 ``queue_full``, with
    Retry-After, only as it arrives and only when N requests were waiting already: waiting
    requests are never dropped to make room, and with no limit nothing is answered 429."""
    out: list[Violation] = []
    limit = config.queue_max
    waiting: set[int] = set()
    over = False  # reported: one violation per stretch over the limit
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, EVENT_TYPES):
            if limit and len(waiting) > limit and not over:
                out.append(Violation("queue_limit_held", at.t, f"{len(waiting)} requests "
                                     f"waiting ({sorted(waiting)}); --queue-max is {limit}"))
            over = bool(limit) and len(waiting) > limit
        if isinstance(what, RequestArrived):
            waiting.add(what.req)
        elif isinstance(what, (Forward, ClientGone)):
            waiting.discard(what.req)
        elif isinstance(what, Reply):
            waiting.discard(what.req)
            if what.status != 429 and what.kind != errors.QUEUE_FULL:
                continue
            cause = replay.cause
            ahead = len(waiting)
            if not (isinstance(cause, RequestArrived) and cause.req == what.req):
                out.append(Violation("queue_limit_held", at.t, f"request {what.req} answered "
                                     f"{what.status} {what.kind} after it arrived: a waiting "
                                     "request dropped"))
            elif not limit or ahead < limit:
                out.append(Violation("queue_limit_held", at.t, f"request {what.req} answered "
                                     f"{what.status} {what.kind} with {ahead} waiting; "
                                     f"--queue-max is {limit or 'unlimited'}"))
            elif (what.status, what.kind) != (429, errors.QUEUE_FULL) or not what.retry_after:
                out.append(Violation("queue_limit_held", at.t, f"request {what.req}: a full "
                                     f"queue answered {what.status} {what.kind} retry_after="
                                     f"{what.retry_after!r}, not 429 queue_full with "
                                     "Retry-After"))
    if limit and len(waiting) > limit and not over:
        out.append(Violation("queue_limit_held", replay.now, f"{len(waiting)} requests waiting "
                             f"at the end; --queue-max is {limit}"))
    return out


POLICY_CHECKS: dict[str, Check] = {
    "pinned_never_evicted": pinned_never_evicted,
    "ttl_unloads_idle": ttl_unloads_idle,
    "concurrency_held": concurrency_held,
    "queue_limit_held": queue_limit_held,
}


# -- the other guarantees with the policies on ---------------------------------------------------

POLICY_EVENT = "policy_change"
POLICY_KEYS = {"ttl", "pinned", "concurrency"}
# The guarantees that judge every first stop caused by an event other than an API call or a
# catalog change as an eviction: a TTL unload is none.
EVICTION_CHECKS = ("busy_never_evicted", "victim_is_lru", "evictions_needed", "no_thrash",
                   "loading_stops")


def policy_event_problem(what: Publish) -> str | None:
    """What is wrong with a ``policy_change`` event's payload, if anything."""
    data = what.data
    if set(data) != POLICY_KEYS:
        return f"keys {sorted(data)}, not {sorted(POLICY_KEYS)}"
    if not (isinstance(data["ttl"], (int, float)) and data["ttl"] >= 0
            and isinstance(data["pinned"], bool)
            and isinstance(data["concurrency"], int) and data["concurrency"] >= 0):
        return f"malformed {data!r}"
    return None


@dataclass
class Notes:
    """What :func:`set_aside` needs to know of a trace: its TTL unloads, its policy refusals,
    its well-formed ``policy_change`` events, and the loads that pinned models crowded out."""

    expired: set[tuple[float, str]] = field(default_factory=set)  # (time, model)
    refused: set[int] = field(default_factory=set)  # 429 queue_full, 503 pinned_models_full
    policy_events: set[tuple[float, str]] = field(default_factory=set)  # (time, model)
    crowded: dict[str, list[float]] = field(default_factory=dict)  # asked model -> times
    # (time, victim) of each eviction -> the pinned models then (never victims, so never "LRU")
    pinned: dict[tuple[float, str], set[str]] = field(default_factory=dict)
    behind_line: set[int] = field(default_factory=set)  # see set_aside: bounded_wait

    def walker(self, config: RouterConfig, replay: Replay) -> Walk:
        while (at := (yield ())) is not None:
            what = at.what
            child = replay.first_stop(what)
            if isinstance(what, RequestArrived):
                model = replay.model_of(what.model)
                spec = _spec(replay, model)
                if spec is not None and spec.concurrency and replay.usable(model) is not None \
                        and replay.open_for(model):
                    self.behind_line.add(what.req)
            elif isinstance(what, ChildExited) and what.instance in replay.children:
                exited = replay.children[what.instance]  # its line goes back to the queue
                spec = _spec(replay, exited.model)
                if spec is not None and spec.concurrency and exited.ready:
                    self.behind_line.update(r.req for r in replay.open_for(exited.model))
            if child is not None and _expired(what):
                self.expired.add((at.t, child.model))
            elif child is not None:
                self.pinned[(at.t, child.model)] = {c.model for c in replay.children.values()
                                                    if _pinned(replay, c.model)}
            elif isinstance(what, Reply) and what.kind in (errors.QUEUE_FULL, errors.PINNED_OUT):
                self.refused.add(what.req)
            elif isinstance(what, Publish) and what.event == POLICY_EVENT \
                    and policy_event_problem(what) is None:
                self.policy_events.add((at.t, what.model))
            elif isinstance(what, Spawn) or isinstance(what, EVENT_TYPES):
                for model in replay.asked:
                    if crowded_out(replay, config, model):
                        self.crowded.setdefault(model, []).append(at.t)
        return []


def _names(model: str, detail: str) -> bool:
    return re.search(rf"(?<![\w./:-]){re.escape(model)}(?![\w./:-])", detail) is not None


def set_aside(violations: Iterable[Violation], notes: Notes) -> list[Violation]:
    """``violations`` of ``invariants.CHECKS`` less those that read a policy's own decision as
    a fault (see the module docstring); this module's guarantees judge each of those."""
    kept = []
    for v in violations:
        if v.guarantee in EVICTION_CHECKS and any(
                t == v.t and _names(model, v.detail) for t, model in notes.expired):
            continue
        lru = re.match(r"evicted (.+) \(last used t=[^)]*\) while (\[.*\]) were idle", v.detail)
        if v.guarantee == "victim_is_lru" and lru is not None and set(
                ast.literal_eval(lru.group(2))) <= notes.pinned.get((v.t, lru.group(1)), set()):
            continue  # the models used less recently are pinned: never victims
        if v.guarantee == "errors_have_causes" and any(
                re.match(rf"(request|API call \(load\)) {req} for ", v.detail)
                for req in notes.refused):
            continue
        if v.guarantee == "events_well_formed" and any(
                t == v.t and v.detail.startswith(f"{POLICY_EVENT} for {model!r}:")
                for t, model in notes.policy_events):
            continue
        if v.guarantee == "api_calls_take_effect" and any(
                re.match(rf"load \d+ of {re.escape(model)} answered 200 but no child", v.detail)
                and any(t >= v.t for t in times) for model, times in notes.crowded.items()):
            continue
        if v.guarantee == "bounded_wait" and any(
                re.match(rf"request {req} for ", v.detail) for req in notes.behind_line):
            continue  # its bound takes the place of the requests in line (see the docstring)
        if v.guarantee == "fifo_between_models" and any(
                v.t in times and re.search(rf"before {re.escape(model)} \(waiting", v.detail)
                for model, times in notes.crowded.items()):
            continue
        kept.append(v)
    return kept


class PolicyChecking(Checking):
    """Every guarantee, ``invariants.CHECKS`` and ``POLICY_CHECKS``, over one trace fed as it
    grows, with ``invariants.Checking``'s interface (``feed``, ``so_far``, ``finish``); the
    verdicts of the former that are the policies' own business are set aside."""

    def __init__(self, config: RouterConfig, *, liveness: bool = True) -> None:
        walkers: dict[str, Walker] = {
            name: check.walker  # type: ignore[attr-defined]
            for name, check in {**CHECKS, **POLICY_CHECKS}.items()
            if liveness or name not in LIVENESS}
        self.notes = Notes()
        walkers["policy_notes"] = self.notes.walker
        super().__init__(config, walkers)

    def so_far(self) -> list[Violation]:
        for name, found in self._found.items():
            ended = self._ended.get(name)
            if isinstance(ended, Exception):
                raise ended
            kept = set_aside(found, self.notes)
            if kept:
                return kept
        return []

    def finish(self, *, first_only: bool = False) -> list[Violation]:
        found = super().finish()
        kept = set_aside(found, self.notes)
        if first_only and kept:
            return [v for v in kept if v.guarantee == kept[0].guarantee]
        return kept


def check_policies(trace: Sequence[At], config: RouterConfig, *, liveness: bool = True,
                   first_only: bool = False) -> list[Violation]:
    """``invariants.check_all`` with the policies' guarantees too (see :class:`PolicyChecking`)."""
    checking = PolicyChecking(config, liveness=liveness)
    checking.feed(trace)
    return checking.finish(first_only=first_only)
