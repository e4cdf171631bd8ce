"""The router's guarantees (ROUTER.md sections 4, 6 and 7, BUGZOO.md), each a plain function over
a trace.

Every function takes a trace (a sequence of ``At``) and the router's configuration, and returns
the list of its violations, empty when the guarantee held. They read nothing but the trace, so the
simulator sweeps, the stateful tests and the live conformance runs call the same functions. The
first sentence of each docstring is the promise, as a router developer can read it;
``tests/test_invariants.py`` shows a trace that breaks each one.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from refimpl.core import errors
from refimpl.core.commands import (
    Forward,
    Kill,
    Listed,
    Log,
    Publish,
    RemoveFiles,
    Reply,
    SendExit,
    Spawn,
)
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.events import (
    EVENT_TYPES,
    CatalogChanged,
    ChildExited,
    ChildOutput,
    ClientGone,
    DownloadAsked,
    ListAsked,
    LoadAsked,
    RemoveAsked,
    RequestArrived,
    ResponseEnded,
    UnloadAsked,
)
from refimpl.core.lifecycle import Status, is_legal
from refimpl.core.trace import At

from .replay import Child, Replay, Req


@dataclass(frozen=True, slots=True)
class Violation:
    guarantee: str
    t: float
    detail: str

    def __str__(self) -> str:
        return f"[{self.guarantee}] at t={self.t:.6g}: {self.detail}"


Trace = Sequence[At]
# Virtual seconds a child may take to exit after it was killed or asked to exit, and for the
# router to act on an event: what the bounds below allow beyond the stop timeouts and loads.
SLACK = 2.0
# A first stop the scheduler makes for another model's load: an eviction for room, or a stop
# that makes way for a model whose group the child is in the way of (ROUTER.md 7). Both spare a
# busy, loading or pinned child ("busy ones drain ... never evicted busy"; "a loading one first
# serves its waiters"; a pin is "never chosen as an eviction victim or stopped for a group");
# only an eviction answers to the count, the memory and the LRU order.
FOR_ANOTHER = ("evicted", "grouped")


def _stopped(what: object) -> str:
    """How a violation names a stop for another model: "evicted", or the group's way."""
    if isinstance(what, SendExit) and what.group is not None:
        return f"stopped (making way for {what.group})"
    return "evicted"


# Each guarantee is written as a walk: a generator given the configuration and a Replay, sent
# each entry while the replay still holds the state from *before* it, then None, with the replay
# at the end of the trace; it yields the list it appends its violations to, and returns it.
# ``@_walks`` makes it the plain function over a trace that CHECKS lists; check_all (and
# ``Checking``, for a trace that grows) sends every walk the entries of one shared replay: one
# pass over the trace instead of one per guarantee.
Walk = Generator[Sequence[Violation], "At | None", list[Violation]]
Walker = Callable[[RouterConfig, Replay], Walk]


def _walks(walker: Walker) -> Check:
    @functools.wraps(walker)
    def check(trace: Trace, config: RouterConfig) -> list[Violation]:
        checking = Checking(config, {walker.__name__: walker}, chatter=True)
        checking.feed(trace)
        return checking.finish()
    check.walker = walker  # type: ignore[attr-defined]
    return check


# -- limits and evictions ----------------------------------------------------------------------

@_walks
def limits_held(config: RouterConfig, replay: Replay) -> Walk:
    """At no instant do more model children run than ``models_max``, or need more memory on a
    device than it has; a child asked to stop counts until it has exited, and each child counts
    with the memory its model's spec said when it was spawned (Z3, Z4, Z17). Download children
    take no slot."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        if not isinstance(what, Spawn) or what.download:
            continue
        alive = [c for c in replay.children.values() if not c.download]
        spec = replay.specs.get(what.model)
        need = dict(spec.memory) if spec is not None else {}
        names = sorted([c.model for c in alive] + [what.model])
        if config.models_max and len(alive) + 1 > config.models_max:
            out.append(Violation("limits_held", at.t, f"{len(alive) + 1} children alive, "
                                 f"models_max is {config.models_max}: {names}"))
        for device, capacity in config.devices.items():
            used = sum(c.memory.get(device, 0) for c in alive) + need.get(device, 0)
            if used > capacity:
                out.append(Violation("limits_held", at.t, f"device {device}: {used} bytes "
                                     f"needed by {names}, {capacity} available"))
    return out


@_walks
def busy_never_evicted(config: RouterConfig, replay: Replay) -> Walk:
    """The router never evicts a child with in-flight requests, however long the wait (Z2, Z19),
    nor stops one to make way for another group (ROUTER.md 7: busy ones drain)."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        child = replay.first_stop(at.what)
        if child is not None and replay.stop_reason(at.what) in FOR_ANOTHER:
            busy = replay.in_flight(child.instance)
            if busy:
                out.append(Violation("busy_never_evicted", at.t,
                                     f"{_stopped(at.what)} {child.model} (instance "
                                     f"{child.instance}) with "
                                     f"requests {[r.req for r in busy]} in flight"))
    return out


@_walks
def victim_is_lru(config: RouterConfig, replay: Replay) -> Walk:
    """An eviction takes the least recently used idle model (ready, not stopping, nothing in
    flight, no request waiting for it): last use is its last forward, response end or ready. A
    pinned model is never a candidate (ROUTER.md 7), however long it has been idle: it is not
    the LRU model passed over (``pinned_never_evicted`` judges its own eviction)."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        victim = replay.first_stop(at.what)
        if victim is None or replay.stop_reason(at.what) != "evicted" or not replay.idle(victim):
            continue  # a busy or loading victim is another guarantee's business
        used = replay.last_used.get(victim.model, 0.0)
        older = sorted(c.model for c in replay.children.values()
                       if c is not victim and replay.idle(c) and not replay.pinned(c.model)
                       and replay.last_used.get(c.model, 0.0) < used)
        if older:
            out.append(Violation("victim_is_lru", at.t, f"evicted {victim.model} (last used "
                                 f"t={used:.6g}) while {older} were idle and used less recently"))
    return out


@_walks
def evictions_needed(config: RouterConfig, replay: Replay) -> Walk:
    """The router evicts only for models that wait for a load, and never more children than the
    waiting models need: with a count limit, evictions leave at most as many free slots as models
    wait; with a memory budget, the waiting models together do not fit beside the children that
    stay (Z7's bound: evictions <= slots needed)."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        victim = replay.first_stop(at.what)
        if victim is None or replay.stop_reason(at.what) != "evicted":
            continue
        waiting = replay.demand()
        staying = [c for c in replay.children.values() if not c.download and c.stop is None]
        by_count = config.models_max > 0 and len(waiting) - (
            config.models_max - len(staying)) >= 1
        by_memory = any(
            sum(c.memory.get(d, 0) for c in staying)
            + sum(replay.specs[m].memory.get(d, 0) for m in waiting if m in replay.specs) > cap
            for d, cap in config.devices.items())
        if not (by_count or by_memory):
            out.append(Violation("evictions_needed", at.t, f"evicted {victim.model} while "
                                 f"{sorted(waiting) or 'no model'} waited for a load and "
                                 f"{len(staying)} children stay: not needed"))
    return out


@_walks
def loads_bounded(config: RouterConfig, replay: Replay) -> Walk:
    """A model evicted for others is loaded again only for a demand that came after theirs, so
    loads never exceed the model switches the queue order needs (Z1's bound)."""
    out: list[Violation] = []
    evicted_for: dict[str, float] = {}  # model -> oldest demand it was evicted for
    while (at := (yield out)) is not None:
        what = at.what
        victim = replay.first_stop(what)
        if victim is not None:
            if replay.stop_reason(what) in FOR_ANOTHER:  # a group's way too
                others = [t for m, (t, _) in replay.demand().items() if m != victim.model]
                evicted_for[victim.model] = min(others, default=at.t)
            else:
                evicted_for.pop(victim.model, None)
        elif isinstance(what, ChildExited):
            child = replay.children.get(what.instance)
            if child is not None and child.stop is None:  # a crash: any demand may reload it
                evicted_for.pop(child.model, None)
        elif isinstance(what, Spawn) and not what.download and what.model in evicted_for:
            since = evicted_for.pop(what.model)
            demand = [r.arrived for r in replay.open_for(what.model) if r.kind == "request"]
            if what.model in replay.asked:
                demand.append(replay.asked[what.model])
            if demand and max(demand) < since:
                out.append(Violation("loads_bounded", at.t, f"{what.model} loaded again for "
                                     f"requests that were waiting (since t={min(demand):.6g}) "
                                     f"before the ones it was evicted for (t={since:.6g}): a "
                                     "thrash"))
    return out


# -- answers -----------------------------------------------------------------------------------

@_walks
def answered_once(config: RouterConfig, replay: Replay) -> Walk:
    """Each request is forwarded once or answered once, never both, never after its client left;
    its response ends at most once; each API call gets exactly one reply."""
    out: list[Violation] = []
    decided: dict[int, str] = {}
    ended: set[int] = set()
    calls: set[int] = set()
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, (LoadAsked, UnloadAsked, DownloadAsked, RemoveAsked)) or (
                isinstance(what, CatalogChanged) and what.req is not None):
            assert what.req is not None
            calls.add(what.req)
        elif isinstance(what, Forward) and what.req in calls:
            out.append(Violation("answered_once", at.t, f"API call {what.req} was forwarded"))
        elif isinstance(what, (Forward, Reply)):
            prior = decided.get(what.req)
            if prior is not None:
                out.append(Violation("answered_once", at.t, f"request {what.req}: "
                                     f"{type(what).__name__} after {prior}"))
            decided[what.req] = type(what).__name__
        elif isinstance(what, ClientGone):
            decided.setdefault(what.req, "ClientGone")
        elif isinstance(what, ResponseEnded):
            if decided.get(what.req) != "Forward" or what.req in ended:
                out.append(Violation("answered_once", at.t, f"request {what.req}: response "
                                     f"ended without one forward (saw {decided.get(what.req)})"))
            ended.add(what.req)
    return out


@_walks
def every_request_answered(config: RouterConfig, replay: Replay) -> Walk:
    """Liveness: by the end of the trace every request was served, got an error or was given up
    by its client, and every API call got its reply (Z5, Z7, Z15, Z17). Run it on a trace that
    continued past the last fault."""
    out: list[Violation] = []
    while (yield out) is not None:
        pass
    h = replay.history()
    for r in h.requests.values():
        if not r.ended:
            what = "request" if r.kind == "request" else f"API call ({r.kind})"
            where = f"forwarded to instance {r.instance}" if r.instance else "never forwarded"
            out.append(Violation("every_request_answered", h.end,
                                 f"{what} {r.req} for {r.model} (arrived t={r.arrived:.6g}) has "
                                 f"no answer; {where}"))
    return out


def _wait_bounds(config: RouterConfig, replay: Replay
                 ) -> Generator[Sequence[Violation], At | None, tuple[list[tuple[Req, float]], float]]:
    """Each request's and API call's latest decision time: see :func:`bounded_wait`. A walk
    (sent the entries, then None), for :func:`bounded_wait` to ``yield from``."""
    stop = max((s.stop_timeout for s in config.models), default=10.0)
    # A request that finds its model queued joins that entry: its place in the queue is the
    # oldest waiting request's, and what joined an entry ahead of it is work ahead of it. A
    # request whose client left while the entry was still queued holds no place for it: the
    # entry moves back to its oldest request still waiting. (The requests already waiting are
    # kept by id: where each starts waiting needs the downloads of the whole trace.)
    candidates: dict[int, list[tuple[tuple[float, float], int | None]]] = {}
    waiting: dict[int, list[int]] = {}
    # Models with a concurrency limit (ROUTER.md 7) at some point: their requests go to the
    # child N at a time, in arrival order (in line), so one that joins an entry or a load, and
    # takes its place, still waits behind every request of its model that came before it
    # (``before`` below). When a ready child of such a model stops or dies, its line goes back
    # to the queue, into its model's entry with the requests queued for it: one entry, whose
    # place is its oldest request's own (the places they had when they came were those of the
    # entries the child's load consumed); and it may have to wait for every request in flight
    # then, though some came after it (a model in its group's way, busy since before the child
    # died, drains first).
    limited = {s.name for s in config.models if s.concurrency}
    requeued: dict[int, float] = {}  # request -> when its line last went back to the queue
    while (at := (yield ())) is not None:
        if isinstance(at.what, (SendExit, Kill, ChildExited)):
            child = replay.every_child.get(at.what.instance)
            if child is not None and not child.download and child.model in limited \
                    and child.ready_at is not None:
                members = [o.req for o in replay.open_for(child.model) if not replay.doomed(o)]
                for req in members:
                    del candidates[req][1:]  # its own arrival only
                    waiting[req] = [o for o in members if o != req]
                    requeued[req] = at.t
        elif isinstance(at.what, CatalogChanged):
            stop = max([stop, *(s.stop_timeout for s in at.what.specs)])
            limited.update(s.name for s in at.what.specs if s.concurrency)
        elif isinstance(at.what, DownloadAsked):  # a download's entry has the default spec
            stop = max(stop, ModelSpec(at.what.model).stop_timeout)
        elif isinstance(at.what, RequestArrived):
            model = replay.model_of(at.what.model)
            asked = [(replay.asked[model], replay.asked_by[model])] if model in replay.asked \
                else []
            child = replay.by_model.get(model)
            if child is not None and not child.ready and child.stop is None \
                    and not child.download:  # it joins a load in progress: the load's place
                asked.append(child.place)
            # (one that waited for a download holds its place from the download's end)
            candidates[at.what.req] = [((at.t, replay.index + 1), None),
                                       *((key, None) for key in asked)]
            # Requests open for a model whose ready child has a concurrency limit wait *in line*
            # on that child (ROUTER.md 7), in no queue entry: one that comes after them goes
            # in line behind them, or, if its model drains, to the queue behind the entry the
            # drain is for, which may be newer than they are; either way it has no earlier
            # place than its own.
            spec = replay.specs.get(model)
            usable = replay.usable(model)
            in_line = spec is not None and bool(spec.concurrency) and usable is not None \
                and usable.ready
            waiting[at.what.req] = [] if in_line else [
                r.req for r in replay.open_for(model) if not replay.doomed(r)]
    h = replay.history()
    loads = sorted((c.spawned, (c.ready_at if c.ready_at is not None else
                                c.exited_at if c.exited_at is not None else h.end) - c.spawned)
                   for c in h.children.values() if not c.download)
    spawns = [t for t, _ in loads]
    longest = max((d for _, d in loads), default=0.0)
    downloads: dict[str, list[Child]] = {}
    for c in h.children.values():
        if c.download:
            downloads.setdefault(c.model, []).append(c)

    def start_of(r: Req) -> float:
        """When a request joins the queue: at arrival, or when the download it waits for ends."""
        for dl in downloads.get(r.model, []) if r.kind == "request" else []:
            if dl.spawned <= r.arrived and (dl.exited_at is None or dl.exited_at >= r.arrived):
                return dl.exited_at if dl.exited_at is not None else float("inf")
        return r.arrived

    for req, others in waiting.items():
        candidates[req].extend(((max(r.arrived, start_of(r)), r.seq), r.req)
                               for r in map(h.requests.__getitem__, others))

    def held(other: int | None, by: Req) -> bool:
        """Whether ``other`` still holds the entry's place for ``by``: it did not leave before
        the entry's load was started (``by`` joined that load) or, with no load, before ``by``
        was decided. A load started for it keeps its place after it leaves."""
        if other is None:
            return True
        o = h.requests[other]
        if not o.gone or o.ended_at is None:
            return True
        cutoff = by.decided_at if by.decided_at is not None else h.end
        load = h.children.get(by.joined) if by.joined is not None else None
        if load is not None:
            cutoff = min(cutoff, load.spawned)
        return o.ended_at > cutoff

    place = {req: min(key for key, other in found if held(other, h.requests[req]))
             for req, found in candidates.items()}
    keys: dict[int, tuple[float, float]] = {}
    for r in h.requests.values():
        start = start_of(r)
        keys[r.req] = (start, r.seq) if start > r.arrived else place.get(r.req, (r.arrived, r.seq))
    starts = {req: key[0] for req, key in keys.items()}
    # For a model with a concurrency limit: the latest end among its requests that came before
    # each one (the line ahead of it on its model's child).
    before: dict[int, float] = {}
    line_end: dict[str, float] = {}
    for r in h.requests.values():  # in arrival order
        if r.kind == "request" and r.model in limited:
            before[r.req] = line_end.get(r.model, 0.0)
            end = r.ended_at if r.ended_at is not None else float("inf")
            line_end[r.model] = max(line_end.get(r.model, 0.0), end)
    # A request whose line went back to the queue at t also waits for the requests in flight
    # at t to end (the latest end among them).
    drained = {req: max((o.ended_at if o.ended_at is not None else float("inf")
                         for o in h.requests.values()
                         if o.instance is not None and o.decided_at is not None
                         and o.decided_at <= t and (o.ended_at is None or o.ended_at > t)),
                        default=0.0)
               for req, t in requeued.items()}
    reqs = sorted(h.requests.values(), key=lambda r: keys[r.req])
    out: list[tuple[Req, float]] = []
    ahead = 0.0  # the latest end among the requests whose place in the queue is ahead
    for r in reqs:
        if r.kind == "request":
            start = starts[r.req]
            decided = r.decided_at if r.decided_at is not None else h.end
            first = bisect.bisect_left(spawns, start - longest)
            last = bisect.bisect_right(spawns, decided)
            load = sum(d for t, d in loads[first:last] if t + d >= start)
            work = max(start, ahead, before.get(r.req, 0.0), drained.get(r.req, 0.0))
            out.append((r, work + stop + load + SLACK))
        elif r.kind in ("unload", "remove"):
            out.append((r, r.arrived + stop + SLACK))
        else:
            out.append((r, r.arrived))
        end = r.ended_at if r.ended_at is not None else float("inf")
        if r.kind in ("request", "load"):
            ahead = max(ahead, end)
    return out, h.end


@_walks
def bounded_wait(config: RouterConfig, replay: Replay) -> Walk:
    """No starvation: a request is forwarded or answered no later than
    ``max(arrival, E) + T + L + SLACK``, where E is when every request that arrived before it
    had ended (the work ahead of it; a request waiting for a download starts when the download
    child exits), T the longest stop timeout (the victims' exit), L the load times of the
    children that loaded while it waited, and SLACK 2 s; load, download and catalog calls are
    answered at once, unload and remove calls within T + SLACK. Checked at every instant of
    the trace, not only at its end."""
    out: list[Violation] = []
    bounds, end = yield from _wait_bounds(config, replay)
    for r, bound in bounds:
        decided = r.decided_at if r.decided_at is not None else (
            r.ended_at if r.ended_at is not None else None)
        late = (decided if decided is not None else end) > bound + 1e-9
        if late and (decided is not None or end > bound):
            what = "request" if r.kind == "request" else f"API call ({r.kind})"
            out.append(Violation("bounded_wait", bound, f"{what} {r.req} for {r.model} "
                                 f"(arrived t={r.arrived:.6g}) still waiting at its bound "
                                 f"t={bound:.6g}" + (f"; decided at t={decided:.6g}"
                                                     if decided is not None else "")))
    return out


def _request_error_cause(r: Req, reply: Reply, replay: Replay,
                         config: RouterConfig) -> tuple[int, str] | None:
    """The (status, kind) the trace shows a cause for, if any."""
    want = _event_error_cause(r, reply, replay, config)
    autoload = config.autoload if r.autoload is None else r.autoload
    if want != (reply.status, reply.kind) and not autoload and r.known and \
            r.instance is None and replay.usable(r.model) is None:
        # Autoload off, held behind its model's drain, and that model stopped meanwhile.
        return 400, errors.MODEL_NOT_LOADED
    return want


def _event_error_cause(r: Req, reply: Reply, replay: Replay,
                       config: RouterConfig) -> tuple[int, str] | None:
    """The (status, kind) that the event being replayed is a cause for, if any."""
    cause = replay.cause
    if reply.status == 507 and replay.too_big(r.model):
        return 507, errors.INSUFFICIENT_MEMORY
    if reply.kind == errors.PINNED_OUT and replay.pinned_out(r.model):
        return 503, errors.PINNED_OUT  # on arrival, or queued when pins crowd it out
    if isinstance(cause, RequestArrived) and cause.req == r.req:
        if not r.name:
            return 400, errors.INVALID_REQUEST
        if not r.known:
            return 400, errors.MODEL_NOT_FOUND
        autoload = config.autoload if r.autoload is None else r.autoload
        if not autoload and replay.usable(r.model) is None:
            return 400, errors.MODEL_NOT_LOADED
        # (the replay counts the request itself among those waiting)
        if config.queue_max and replay.waiting() - 1 >= config.queue_max:
            return 429, errors.QUEUE_FULL
        return None
    if isinstance(cause, ChildExited):
        child = replay.every_child.get(cause.instance)
        if child is not None and child.model == r.model:
            return 503, errors.DOWNLOAD_FAILED if child.download else errors.LOAD_FAILED
        return None
    if isinstance(cause, RemoveAsked) and r.model in (replay.model_of(cause.model), cause.model):
        return 404, errors.REMOVED
    if isinstance(cause, CatalogChanged) and r.model in replay.removed_now:
        return 404, errors.REMOVED
    return None


def _call_error_cause(r: Req, reply: Reply, replay: Replay,
                      clashed: bool) -> tuple[int, str] | None:
    """The (status, kind) the trace shows a cause for, for an API call."""
    if r.kind == "catalog":
        return (400, errors.INVALID_REQUEST) if clashed else None
    if r.kind == "download":
        known = r.known or r.model in replay.by_model
        return (400, errors.ALREADY_EXISTS) if known else None
    if r.kind == "unload":
        running = r.known and r.model in replay.by_model
        return (400, errors.NOT_RUNNING) if not running else None
    if not r.known:
        return (404, errors.MODEL_NOT_FOUND) if r.kind in ("load", "remove") else None
    if r.kind == "load":
        if replay.usable(r.model) is not None:
            return 400, errors.ALREADY_RUNNING
        if replay.too_big(r.model):
            return 507, errors.INSUFFICIENT_MEMORY
        if replay.pinned_out(r.model):
            return 503, errors.PINNED_OUT
    return None


def _catalog_clash(replay: Replay, event: CatalogChanged) -> bool:
    removed = replay.vanishing(event)
    owners = {n: m for n, m in replay.names.items()
              if m not in removed and m not in {s.name for s in event.specs}}
    for spec in event.specs:
        for name in (spec.name, *spec.aliases):
            if owners.setdefault(name, spec.name) != spec.name:
                return True
    return False


@_walks
def errors_have_causes(config: RouterConfig, replay: Replay) -> Walk:
    """An error answers only a cause the trace shows: a request with no model, an unknown or
    removed model, autoload off for a model not running (when the request came, or when its
    turn came: behind a drain it waits like any other), a model too big for a device, or that
    model's own child failing or being unloaded under it; an API call refused only when its
    model is unknown, already running (load), not running (unload) or already exists
    (download), or when a catalog change names a model twice. Each error has the status and the
    kind (``refimpl.core.errors``) of its cause and a message, and a success is 200 ``ok``.
    Lack of capacity is never a cause, whatever the status or kind (Z10), but for the policies
    of ROUTER.md 7: a request that arrives while ``--queue-max`` requests wait is refused 429
    ``queue_full``, and a request or load that the pinned models running leave no room (on
    arrival, or queued when pins crowd it out), or that a pinned model running blocks (groups:
    in its way, never stopped for it) 503 ``pinned_models_full``."""
    out: list[Violation] = []
    catalog: dict[int, bool] = {}  # catalog call -> it clashed
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, CatalogChanged) and what.req is not None:
            catalog[what.req] = _catalog_clash(replay, what)
        if not isinstance(what, Reply):
            continue
        r = replay.requests.get(what.req)
        if r is None:
            continue
        if what.status < 400:
            if r.kind == "request" or (what.status, what.kind) != (200, errors.OK):
                out.append(Violation("errors_have_causes", at.t, f"{r.kind} {r.req}: success "
                                     f"answered {what.status} {what.kind!r}, not 200 'ok' "
                                     "to an API call"))
            continue
        if r.kind == "request":
            want = _request_error_cause(r, what, replay, config)
        else:
            want = _call_error_cause(r, what, replay, catalog.get(r.req, False))
        if want != (what.status, what.kind):
            what_ = "request" if r.kind == "request" else f"API call ({r.kind})"
            shown = f"; its cause calls for {want[0]} {want[1]}" if want else \
                ", but the trace shows no cause for it"
            out.append(Violation("errors_have_causes", at.t, f"{what_} {r.req} for {r.model} "
                                 f"refused with {what.status} {what.kind} {what.message!r}"
                                 + shown))
        elif not what.message:
            out.append(Violation("errors_have_causes", at.t,
                                 f"request {what.req}: error {what.status} with no message"))
    return out


@_walks
def api_calls_take_effect(config: RouterConfig, replay: Replay) -> Walk:
    """An API call answered 200 did what it says: a load starts a child for the model (at once,
    or when its download or the queue lets it, unless an unload, a removal or a reload that
    made it too big for a device came first); an
    unload leaves the model with no child that takes requests but one started for a later demand; a download starts a download
    child; a removal publishes ``model_remove`` and removes the files; a catalog change makes
    every new name resolve and leaves no removed or changed model's old child taking requests,
    and a reload of the sources (``reload``) publishes ``models_reload`` once. A load that the
    pinned models running leave no room after its 200, or block in its group's way, is not
    owed: the router drops it (ROUTER.md 7, pin, groups)."""
    out: list[Violation] = []
    # model -> (when, call, trace index) of a 200 load
    due_load: dict[str, tuple[float, int, int]] = {}
    checks: list[tuple[int, Req, Any]] = []  # (call, request, what to check after the event)
    seen: list[Any] = []  # commands of the current event

    def settle(replay: Replay) -> None:
        for req, r, extra in checks:
            child = replay.usable(r.model)
            # a child started after the unload was asked (for a load asked after it) is not one
            # the unload was about
            if r.kind == "unload" and child is not None and child.seq < r.seq:
                out.append(Violation("api_calls_take_effect", replay.now, f"unload {req} of "
                                     f"{r.model} answered 200 but its child still takes "
                                     "requests"))
            elif r.kind == "download" and not any(
                    isinstance(c, Spawn) and c.download and c.model == r.model for c in seen):
                out.append(Violation("api_calls_take_effect", replay.now, f"download {req} of "
                                     f"{r.model} answered 200 but no download child started"))
            elif r.kind == "remove" and not (
                    any(isinstance(c, RemoveFiles) and c.model == r.model for c in extra)
                    and any(isinstance(c, Publish) and c.event == "model_remove"
                            and c.model == r.model for c in extra)):
                out.append(Violation("api_calls_take_effect", replay.now, f"remove {req} of "
                                     f"{r.model} answered 200 but it was not removed with its "
                                     "files"))
            elif r.kind == "catalog":
                event, before, removed = extra
                reloads = sum(isinstance(c, Publish) and c.event == "models_reload" for c in seen)
                if reloads != (1 if event.reload else 0):
                    out.append(Violation("api_calls_take_effect", replay.now,
                                         f"catalog change {req} published models_reload "
                                         f"{reloads} time(s): a reload of the sources publishes "
                                         "it once, any other change never"))
                for spec in event.specs:
                    if replay.downloading(spec.name):
                        continue
                    lost = [n for n in (spec.name, *spec.aliases)
                            if replay.names.get(n) != spec.name]
                    stale = before.get(spec.name)
                    if lost:
                        out.append(Violation("api_calls_take_effect", replay.now,
                                             f"catalog change {req}: {lost} do not resolve to "
                                             f"{spec.name}"))
                    if stale is not None and stale[1] != spec.launch \
                            and replay.usable(spec.name) is stale[0]:
                        out.append(Violation("api_calls_take_effect", replay.now,
                                             f"catalog change {req}: {spec.name} changed but "
                                             "its old child still takes requests"))
                for name in removed:
                    if replay.usable(name) is not None and not replay.downloading(name):
                        out.append(Violation("api_calls_take_effect", replay.now,
                                             f"catalog change {req}: {name} vanished but its "
                                             "child still takes requests"))
        checks.clear()

    removes: dict[int, list[Any]] = {}  # remove call -> commands since it arrived
    launched: dict[str, tuple[Child, tuple[str, ...]]] = {}
    while (at := (yield out)) is not None:
        what = at.what
        for cmds in removes.values():
            cmds.append(what)
        if isinstance(what, EVENT_TYPES):
            settle(replay)
            seen = []
            if isinstance(what, CatalogChanged):
                launched = {name: (child, replay.specs[name].launch)
                            for name, child in replay.by_model.items()
                            if name in replay.specs and not child.download}
        else:
            seen.append(what)
        if isinstance(what, RemoveAsked):
            removes[what.req] = []
        elif isinstance(what, Spawn) and not what.download:
            due_load.pop(what.model, None)
        elif isinstance(what, (UnloadAsked, RemoveAsked)):
            due_load.pop(replay.model_of(what.model), None)
        elif isinstance(what, Publish) and what.event in ("model_remove", "download_failed"):
            due_load.pop(what.model, None)
        elif isinstance(what, CatalogChanged):
            grown = {s.name for s in what.specs if any(
                s.memory.get(d, 0) > cap for d, cap in config.devices.items())}
            for name in (*replay.vanishing(what), *grown):  # gone, or can never load any more
                due_load.pop(name, None)
        elif isinstance(what, Reply) and what.status == 200:
            r = replay.requests.get(what.req)
            if r is None:
                continue
            if r.kind == "load":
                due_load.setdefault(r.model, (at.t, r.req, replay.index))
            elif r.kind == "remove":
                checks.append((r.req, r, removes.pop(r.req, [])))
            elif r.kind == "catalog":
                event = replay.cause
                assert isinstance(event, CatalogChanged)
                checks.append((r.req, r, (event, launched, replay.removed_now)))
            elif r.kind in ("unload", "download"):
                checks.append((r.req, r, None))
    settle(replay)  # the replay has stepped the whole trace
    for model, (t, req, index) in due_load.items():
        pinned_out = replay.pinned_asks.get(model, -1) > index or replay.pinned_out(model)
        if replay.usable(model) is None and not pinned_out:
            out.append(Violation("api_calls_take_effect", t, f"load {req} of {model} answered "
                                 "200 but no child was started for it"))
    return out


# -- lifecycle ---------------------------------------------------------------------------------

@_walks
def legal_transitions(config: RouterConfig, replay: Replay) -> Walk:
    """Every published status change is in the lifecycle table. A model the trace has not seen
    (or saw removed) starts UNLOADED, or DOWNLOADING when it is a fresh download's entry."""
    out: list[Violation] = []
    status: dict[str, Status] = {}
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, Publish) and what.event == "model_remove":
            status.pop(what.model, None)
        elif isinstance(what, Publish) and what.event == "status_change":
            try:
                new = Status(what.data.get("status"))
            except ValueError:
                out.append(Violation("legal_transitions", at.t,
                                     f"{what.model}: unknown status {what.data.get('status')!r}"))
                continue
            fresh = Status.DOWNLOADING if new is Status.DOWNLOADING else Status.UNLOADED
            old = status.get(what.model, fresh)
            if new is not old and not is_legal(old, new):
                out.append(Violation("legal_transitions", at.t,
                                     f"{what.model}: {old.value} -> {new.value}"))
            status[what.model] = new
    return out


@_walks
def exit_reaches_unloaded(config: RouterConfig, replay: Replay) -> Walk:
    """A child exit in any state leaves its model UNLOADED with the exit code, at once, and
    reported failed exactly when the router did not stop it and the code is not 0 (Z5)."""
    out: list[Violation] = []
    # an exit whose status change is owed, and whether it must say failed
    due: tuple[float, ChildExited, str, bool] | None = None

    def missed(t: float, exited: ChildExited, model: str, failed: bool) -> Violation:
        return Violation("exit_reaches_unloaded", t, f"{model}: child exited with code "
                         f"{exited.code} but the model was not reported unloaded"
                         + (" and failed" if failed else " (not failed)"))

    while (at := (yield out)) is not None:
        what = at.what
        if due is not None:
            t, exited, model, failed = due
            if isinstance(what, Publish) and what.model == model:
                if what.data.get("status") == "unloaded" \
                        and what.data.get("exit_code") == exited.code \
                        and bool(what.data.get("failed")) == failed:
                    due = None
            elif isinstance(what, EVENT_TYPES):  # the exit's own commands are over
                out.append(missed(*due))
                due = None
        if isinstance(what, ChildExited):
            child = replay.children.get(what.instance)
            if child is not None and not child.download:
                due = (at.t, what, child.model, child.stop is None and what.code != 0)
    if due is not None:
        out.append(missed(*due))
    return out


@_walks
def stop_not_failed(config: RouterConfig, replay: Replay) -> Walk:
    """A child the router stopped itself is not reported as failed, whatever its exit code (Z18)."""
    out: list[Violation] = []
    stopped: dict[str, int] = {}  # model -> instance whose exit status is due
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, ChildExited):
            child = replay.children.get(what.instance)
            if child is not None and child.stop is not None:
                stopped[child.model] = what.instance
        elif isinstance(what, Publish) and what.model in stopped \
                and what.data.get("status") == "unloaded":
            if what.data.get("failed"):
                out.append(Violation("stop_not_failed", at.t, f"{what.model}: the router stopped "
                                     f"it (instance {stopped[what.model]}), yet it is reported "
                                     "failed"))
            del stopped[what.model]
    return out


@_walks
def loading_stops(config: RouterConfig, replay: Replay) -> Walk:
    """A LOADING child is never an eviction victim nor stopped for a group (it first serves its
    waiters, ROUTER.md 7), and when unloaded it is killed at once rather
    than asked to exit (it may not read stdin before loading ends) (Z6, Z8)."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        child = replay.first_stop(what)
        if child is not None and not child.ready:
            if replay.stop_reason(what) in FOR_ANOTHER:
                out.append(Violation("loading_stops", at.t, f"{child.model} {_stopped(what)} "
                                     "while loading"))
            elif isinstance(what, SendExit):
                out.append(Violation("loading_stops", at.t, f"{child.model} unloaded while "
                                     "loading with the exit command, not killed at once"))
    return out


# -- requests and loads ------------------------------------------------------------------------

@_walks
def coalesced(config: RouterConfig, replay: Replay) -> Walk:
    """Requests for one model share one load: at most one child per model at once, and every load
    answers a demand (a waiting request, a load asked through the API, or load-on-startup) and
    starts what the model's source says now (its card)."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, Spawn) and not what.download:
            spec = replay.specs.get(what.model)
            if spec is not None and what.model in replay.from_trace and what.card != spec.card:
                out.append(Violation("coalesced", at.t, f"{what.model}: started with "
                                     f"{what.card!r}, its source says {spec.card!r}"))
            other = replay.by_model.get(what.model)
            if other is not None:
                out.append(Violation("coalesced", at.t, f"{what.model}: second child "
                                     f"{what.instance} while {other.instance} is alive"))
            if not replay.open_for(what.model) and what.model not in replay.asked:
                out.append(Violation("coalesced", at.t, f"{what.model}: loaded with no request "
                                     "waiting for it and no load asked"))
    return out


@_walks
def no_thrash(config: RouterConfig, replay: Replay) -> Walk:
    """A model loaded for waiting requests serves one of them with a successful response before
    it can be evicted or stopped for a group (Z1, Z8; ROUTER.md 7: "a loading one first serves
    its waiters"); waiters that left on their own do not count. Only those stops count: an
    unload asked through the API or a crash may end a child at any time."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        child = replay.first_stop(at.what)
        if child is None or replay.stop_reason(at.what) not in FOR_ANOTHER \
                or not child.waiters:
            continue
        stayed = sorted(r for r in child.waiters if not replay.requests[r].gone)
        if stayed and not child.served & set(stayed):
            out.append(Violation("no_thrash", at.t, f"{child.model} (instance {child.instance}) "
                                 f"{_stopped(at.what)} before it served any of the requests {stayed} it "
                                 "was loaded for"))
    return out


@_walks
def fifo_between_models(config: RouterConfig, replay: Replay) -> Walk:
    """Arrival order is respected between models: a model is loaded only when no other model has
    waited longer for a load. A model waits from its oldest request that is neither forwarded
    nor answered while it has no child taking requests (or from a load asked for it, or from the
    end of the download its requests waited for)."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        if not isinstance(what, Spawn) or what.download:
            continue
        waiting = replay.demand()
        place = waiting.get(what.model)
        if place is None:
            continue  # a load for nobody: coalesced says so
        older = sorted((t, m) for m, t in waiting.items() if m != what.model and t < place)
        if older:
            (t, _), head = older[0]
            out.append(Violation("fifo_between_models", at.t, f"loaded {what.model} (waiting "
                                 f"since t={place[0]:.6g}) before {head} (waiting since "
                                 f"t={t:.6g})"))
    return out


@_walks
def never_forward_to_stopping(config: RouterConfig, replay: Replay) -> Walk:
    """Requests go only to a child that is ready and not stopping (Z9), at the address it
    was started with."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, Forward):
            child = replay.children.get(what.instance)
            if child is None or child.stop is not None or not child.ready:
                state = "gone" if child is None else ("stopping" if child.stop else "loading")
                out.append(Violation("never_forward_to_stopping", at.t,
                                     f"request {what.req} forwarded to {what.model} instance "
                                     f"{what.instance}, which is {state}"))
            elif what.address != child.address:
                out.append(Violation("never_forward_to_stopping", at.t,
                                     f"request {what.req} forwarded to {what.address}, but "
                                     f"{what.model} instance {what.instance} serves at "
                                     f"{child.address}"))
    return out


# -- downloads and published events ------------------------------------------------------------

@_walks
def download_takes_no_slot(config: RouterConfig, replay: Replay) -> Walk:
    """Starting a download never stops a model: a download child takes no slot and evicts nothing
    (upstream ``test_router_download_model``)."""
    out: list[Violation] = []
    cause: object = None
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, EVENT_TYPES):
            cause = what
        elif isinstance(what, (SendExit, Kill)) and isinstance(cause, DownloadAsked):
            out.append(Violation("download_takes_no_slot", at.t, f"the download of "
                                 f"{cause.model} stopped child {what.instance}"))
    return out


@_walks
def download_ends_clean(config: RouterConfig, replay: Replay) -> Walk:
    """When a download child exits, its model is at once an ordinary UNLOADED model (the download
    finished) or gone, files included (it failed, was cancelled or crashed) (Z15)."""
    out: list[Violation] = []
    finished: set[str] = set()
    due: tuple[float, str, bool] | None = None  # (exit time, model, finished)

    def check(t: float, model: str, ok: bool, seen: list[object]) -> None:
        removed = any(isinstance(w, Publish) and w.model == model and w.event == "model_remove"
                      for w in seen)
        if ok:
            good = removed or any(isinstance(w, Publish) and w.model == model
                                  and w.data.get("status") == "unloaded" for w in seen)
            want = "reported unloaded"
        else:
            good = removed and any(isinstance(w, RemoveFiles) and w.model == model for w in seen)
            want = "removed with its files"
        if not good:
            out.append(Violation("download_ends_clean", t, f"{model}: download child exited "
                                 f"({'finished' if ok else 'not finished'}) but the model was "
                                 f"not {want}"))

    seen: list[object] = []
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, EVENT_TYPES) and due is not None:
            check(due[0], due[1], due[2], seen)
            due = None
        if isinstance(what, Publish) and what.event == "download_finished":
            finished.add(what.model)
        if isinstance(what, ChildExited):
            child = replay.children.get(what.instance)
            if child is not None and child.download:
                due = (at.t, child.model, child.model in finished)
                finished.discard(child.model)
                seen = []
        elif due is not None:
            seen.append(what)
    if due is not None:
        check(due[0], due[1], due[2], seen)
    return out


POLICY_KEYS = {"ttl", "pinned", "concurrency"}  # a policy_change event's payload
GROUP_KEYS = {"group", "swap", "persistent"}  # a group_change event's payload
STATUS_KEYS = {"unloaded": {"exit_code", "failed"}, "loading": {"progress"},
               "loaded": {"info"}, "sleeping": set(), "downloading": set(), "downloaded": set()}


def _payload_problem(what: Publish, replay: Replay) -> str | None:
    data, event = what.data, what.event
    if not isinstance(what.model, str) or not what.model:
        return "no model named"
    if (what.model == "*") != (event == "models_reload"):
        return "model '*' goes with models_reload only"
    if event == "status_change":
        status = data.get("status")
        if status not in STATUS_KEYS:
            return f"unknown status {status!r}"
        extra = set(data) - {"status"} - STATUS_KEYS[status]
        if extra:
            return f"status {status} with {sorted(extra)}"
        progress = data.get("progress")
        # the progress of a load's stage, or (llama-server's child says it as a projector
        # starts) the bare stage: {"stage": NAME}
        if progress is not None and not (
                isinstance(progress, dict) and isinstance(progress.get("stages"), list)
                and isinstance(progress.get("current"), str)
                and isinstance(progress.get("value"), (int, float))
                and 0.0 <= progress["value"] <= 1.0) and not (
                isinstance(progress, dict) and set(progress) == {"stage"}
                and isinstance(progress["stage"], str)):
            return f"malformed progress {progress!r}"
        if "exit_code" in data and not isinstance(data["exit_code"], int):
            return f"exit_code {data['exit_code']!r} is not an integer"
        return None
    if event == "download_progress":
        progress = data.get("progress")
        if not (isinstance(progress, dict) and progress and all(
                isinstance(u, str) and isinstance(p, dict) and set(p) == {"done", "total"}
                for u, p in progress.items())):
            return f"malformed download progress {data!r}"
        if not replay.downloading(what.model):
            return "download progress of a model that is not downloading"
        return None
    if event in ("download_finished", "download_failed"):
        child = replay.last_download.get(what.model)
        if child is None:
            return f"{event} of a model with no download child"
        if child.results:
            return f"a second download result for instance {child.instance}"
        if set(data) - {"exit_code"}:
            return f"unexpected payload {data!r}"
        return None
    if event == "model_remove":
        return None if not data else f"unexpected payload {data!r}"
    if event == "models_reload":
        return None
    if event == "group_change":  # ROUTER.md 7: "Group changes are published on /models/sse"
        if set(data) != GROUP_KEYS:
            return f"keys {sorted(data)}, not {sorted(GROUP_KEYS)}"
        group = data["group"]
        if not ((group is None or isinstance(group, str) and group)
                and isinstance(data["swap"], bool) and isinstance(data["persistent"], bool)):
            return f"malformed {data!r}"
        if group is None and (data["swap"] or data["persistent"]):
            return f"no group, yet {data!r}"
        return None
    if event == "policy_change":  # ROUTER.md 7: a catalog change altered the model's policies
        if set(data) != POLICY_KEYS:
            return f"keys {sorted(data)}, not {sorted(POLICY_KEYS)}"
        if not (isinstance(data["ttl"], (int, float)) and not isinstance(data["ttl"], bool)
                and data["ttl"] >= 0 and isinstance(data["pinned"], bool)
                and isinstance(data["concurrency"], int)
                and not isinstance(data["concurrency"], bool) and data["concurrency"] >= 0):
            return f"malformed {data!r}"
        return None
    return f"unknown event {event!r}"


@_walks
def events_well_formed(config: RouterConfig, replay: Replay) -> Walk:
    """What ``/models/sse`` publishes matches ROUTER.md section 4: a known event name, the model
    it is about, and its payload (a status with only the fields that status carries; download
    progress while a download runs; one result per download). Section 7 adds
    ``policy_change``, whose payload is the model's ``ttl`` (seconds, >= 0), ``pinned`` and
    ``concurrency`` (>= 0), nothing else, and ``group_change``, whose payload is the model's
    ``group`` (a name, or null: its own group now), ``swap`` and ``persistent`` (booleans,
    both false with no group), nothing else."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, Publish):
            problem = _payload_problem(what, replay)
            if problem is not None:
                out.append(Violation("events_well_formed", at.t, f"{what.event} for "
                                     f"{what.model!r}: {problem}"))
    return out


@_walks
def listing_true(config: RouterConfig, replay: Replay) -> Walk:
    """``GET /models`` says what ``/models/sse`` said: every model a request can name is listed
    once (and any other listed model still has a child on its way out), with the aliases and
    the card its source gave it, the status last published for it (``unloaded`` if none was),
    ``failed`` and the exit code of a failed exit until its next load, and its child's info as
    published when it loaded."""
    out: list[Violation] = []
    published: dict[str, dict[str, Any]] = {}  # model -> its last status_change
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, Publish) and what.event == "status_change":
            published[what.model] = what.data
        elif isinstance(what, Publish) and what.event == "model_remove":
            published.pop(what.model, None)  # a later model of that name starts afresh
        if not isinstance(what, Listed):
            continue

        def wrong(detail: str) -> None:
            out.append(Violation("listing_true", at.t, f"GET /models {what.req}: {detail}"))
        asked = replay.cause
        if not isinstance(asked, ListAsked) or asked.req != what.req:
            wrong("answers no GET /models of that id")
        names = [view.name for view in what.models]
        if len(set(names)) != len(names):
            wrong(f"lists a model twice: {sorted(names)}")
        missing = sorted(set(replay.names.values()) - set(names))
        if missing:
            wrong(f"does not list {missing}, which requests can name")
        for view in what.models:
            name = view.name
            if replay.names.get(name) != name and replay.by_model.get(name) is None:
                wrong(f"lists {name}, which no request can name and has no child")
            spec = replay.specs.get(name)
            # (a card is compared where the trace gave the spec: a checker's configuration of a
            # live router may lack what its sources said)
            if spec is not None and replay.names.get(name) == name and (
                    view.aliases != spec.aliases
                    or (name in replay.from_trace and view.card != spec.card)):
                wrong(f"{name}: aliases {view.aliases} and card {view.card!r}, but its source "
                      f"says {spec.aliases} and {spec.card!r}")
            data = published.get(name, {"status": "unloaded"})
            if view.status != data["status"]:
                wrong(f"{name} is {view.status}, but {data['status']} was published last")
            elif view.failed != bool(data.get("failed")) or (
                    view.exit_code != (data.get("exit_code") if view.failed else None)):
                wrong(f"{name}: failed={view.failed} exit_code={view.exit_code}, but "
                      f"{data} was published last")
            elif "info" in data and dict(view.info) != data["info"]:
                wrong(f"{name}: info {dict(view.info)}, but {data['info']} was published")
    return out


# -- policies beyond upstream (ROUTER.md section 7) ---------------------------------------------

EPSILON = 1e-9  # a timer set for t fires at t: float sums may put it a hair before


def _expired(what: object) -> bool:
    return isinstance(what, SendExit) and what.expired


@_walks
def pinned_never_evicted(config: RouterConfig, replay: Replay) -> Walk:
    """A pinned model is never an eviction victim (least recently used, drained or forced,
    whatever the policy) nor stopped for a group; it may still be unloaded through the API, a
    catalog change or its own TTL. A request or load is refused because of pins (503
    ``pinned_models_full``) only when the pinned models running leave its model no room
    whatever else stops, or (groups in use) run in its group's way, and the message names
    them."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        child = replay.first_stop(what)
        if child is not None and replay.stop_reason(what) in FOR_ANOTHER \
                and replay.pinned(child.model):
            out.append(Violation("pinned_never_evicted", at.t, f"{_stopped(what)} {child.model} "
                                 f"(instance {child.instance}), which is pinned"))
        if isinstance(what, Reply) and what.kind == errors.PINNED_OUT:
            r = replay.requests.get(what.req)
            if r is None:
                continue
            pinned = replay.pinned_out(r.model)
            if not pinned:
                running = sorted(c.model for c in replay.pinned_running(r.model))
                out.append(Violation("pinned_never_evicted", at.t, f"{r.kind} {r.req} for "
                                     f"{r.model} refused for pins, but the pinned models "
                                     f"running ({running}) leave it room and none is in its "
                                     "way"))
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

    def ttl_of(model: str) -> float:
        spec = replay.specs.get(model)
        return config.ttl_of(spec) if spec is not None else 0.0

    def overdue(t: float) -> None:
        for child in replay.children.values():
            if child.instance in late or not replay.idle(child):
                continue
            ttl = ttl_of(child.model)
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
                old = replay.specs.get(new.name)
                if old is None or config.ttl_of(old) != config.ttl_of(new):
                    changed[new.name] = at.t
        child = replay.first_stop(what)
        if child is None or not _expired(what):
            continue
        ttl = ttl_of(child.model)
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
        spec = replay.specs.get(what.model)
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


@_walks
def groups_held(config: RouterConfig, replay: Replay) -> Walk:
    """No group constraint is broken at any instant: a model's child starts only when no child
    of a model in its way is alive (a child asked to stop counts until it has exited): no model
    of another group unless that group is persistent, and in a swap group no other member. A
    stop made for a group (``SendExit.group``, the model it makes way for) stops only a model
    in that model's way; like an eviction it spares a busy, loading or pinned child
    (``busy_never_evicted``, ``no_thrash``, ``loading_stops``, ``pinned_never_evicted``), and a
    pinned model in the way refuses the load instead (``pinned_never_evicted``). With no group
    anywhere this holds trivially."""
    out: list[Violation] = []
    while (at := (yield out)) is not None:
        what = at.what
        if isinstance(what, Spawn) and not what.download:
            way = replay.running_in_way(what.model)
            if way:
                names = ", ".join(f"{c.model} (instance {c.instance}"
                                  + (", asked to stop)" if c.stop is not None else ")")
                                  for c in way)
                spec = replay.specs.get(what.model)
                group = spec.group.name if spec is not None and spec.group else "of its own"
                out.append(Violation("groups_held", at.t, f"{what.model} (group {group}) "
                                     f"started while {names} still ran in its way"))
        elif isinstance(what, SendExit) and what.group is not None:
            child = replay.first_stop(what)
            if child is not None and not replay.in_way(what.group, child.model):
                out.append(Violation("groups_held", at.t, f"stopped {child.model} (instance "
                                     f"{child.instance}) to make way for {what.group}, whose "
                                     "group it is not in the way of"))
    return out


Check = Callable[[Trace, RouterConfig], list[Violation]]

CHECKS: dict[str, Check] = {
    "limits_held": limits_held,
    "busy_never_evicted": busy_never_evicted,
    "victim_is_lru": victim_is_lru,
    "evictions_needed": evictions_needed,
    "loads_bounded": loads_bounded,
    "legal_transitions": legal_transitions,
    "answered_once": answered_once,
    "every_request_answered": every_request_answered,
    "bounded_wait": bounded_wait,
    "errors_have_causes": errors_have_causes,
    "api_calls_take_effect": api_calls_take_effect,
    "exit_reaches_unloaded": exit_reaches_unloaded,
    "coalesced": coalesced,
    "no_thrash": no_thrash,
    "fifo_between_models": fifo_between_models,
    "never_forward_to_stopping": never_forward_to_stopping,
    "loading_stops": loading_stops,
    "stop_not_failed": stop_not_failed,
    "download_takes_no_slot": download_takes_no_slot,
    "download_ends_clean": download_ends_clean,
    "events_well_formed": events_well_formed,
    "listing_true": listing_true,
}
# ROUTER.md section 7's groups: judged with every other one (before the policies', which stay
# last in CHECKS as properties/test_policy_laws.py expects).
GROUP_CHECKS: dict[str, Check] = {"groups_held": groups_held}
CHECKS.update(GROUP_CHECKS)
# The guarantees of the router's own policies (ROUTER.md section 7): judged with every other one.
POLICY_CHECKS: dict[str, Check] = {
    "pinned_never_evicted": pinned_never_evicted,
    "ttl_unloads_idle": ttl_unloads_idle,
    "concurrency_held": concurrency_held,
    "queue_limit_held": queue_limit_held,
}
CHECKS.update(POLICY_CHECKS)
LIVENESS = ("every_request_answered", "api_calls_take_effect")  # need a trace that ran its course


def without_chatter(trace: Trace) -> Trace:
    """``trace`` less what no guarantee reads: a child's output that the router answered with no
    command, and the router's own log lines (about half of a long trace). The entries kept are
    the same objects in the same order, and the last entry stays, so each check gives the same
    verdicts on it, sooner."""
    kept: list[At] = []
    last = len(trace) - 1
    for i, at in enumerate(trace):
        if i < last and _chatter(at, trace[i + 1]):
            continue
        kept.append(at)
    return kept


def _chatter(at: At, after: At) -> bool:
    """Whether ``at``, followed by ``after``, is chatter (see :func:`without_chatter`)."""
    kind = type(at.what)
    return kind is Log or (kind is ChildOutput and type(after.what) in EVENT_TYPES)


class Checking:
    """Every guarantee over a trace fed as it grows, through one shared replay: ``feed`` the new
    entries as they come, ``so_far`` for the violations already certain, ``finish`` at the end.

    A walk appends a violation when it reads the entry that shows it, from that entry and the
    ones before it only, so a violation found on a part of the trace is one the whole trace
    gives too; the end-of-trace checks (every request answered, the bound on waiting, ...) come
    only from ``finish``. Chatter (:func:`without_chatter`) is dropped as it is recognised: each
    entry is held until the next one shows whether it is chatter, so the walks read exactly the
    entries that ``without_chatter`` of the whole trace keeps."""

    def __init__(self, config: RouterConfig, walkers: dict[str, Walker] | None = None, *,
                 liveness: bool = True, chatter: bool = False) -> None:
        if walkers is None:
            walkers = {name: check.walker for name, check in CHECKS.items()  # type: ignore[attr-defined]
                       if liveness or name not in LIVENESS}
        self.replay = Replay(config)
        self._chatter = chatter  # walk every entry (one guarantee called alone)
        self._held: At | None = None
        self._walks: list[tuple[str, Walk]] = []
        self._found: dict[str, Sequence[Violation]] = {}
        self._ended: dict[str, list[Violation] | Exception] = {}  # what each walk returned or raised
        for name, walker in walkers.items():
            walk = walker(config, self.replay)
            self._found[name] = next(walk)
            self._walks.append((name, walk))

    def feed(self, entries: Iterable[At]) -> None:
        if self._chatter:
            for at in entries:
                self._step(at)
            return
        held = self._held
        for at in entries:
            if held is not None and not _chatter(held, at):
                self._step(held)
            held = at
        self._held = held

    def so_far(self) -> list[Violation]:
        """The violations of the first guarantee (in CHECKS order) that has failed on the
        entries walked so far: each one the whole trace gives too."""
        for name, found in self._found.items():
            ended = self._ended.get(name)
            if isinstance(ended, Exception):
                raise ended
            if found:
                return list(found)
        return []

    def finish(self, *, first_only: bool = False) -> list[Violation]:
        """Every guarantee's violations on the whole trace, in CHECKS order; ``first_only``
        stops at the first guarantee that failed. A walk that raised raises here, in its turn."""
        if self._held is not None:  # the last entry stays, whatever it is
            self._step(self._held)
            self._held = None
        self._step(None)
        out: list[Violation] = []
        for name in self._found:
            found = self._ended[name]
            if isinstance(found, Exception):
                raise found
            out.extend(found)
            if out and first_only:
                break
        return out

    def _step(self, at: At | None) -> None:
        ended = False
        for name, walk in self._walks:
            try:
                walk.send(at)
            except StopIteration as done:  # at None, as it should
                self._ended[name] = done.value if at is None else RuntimeError(
                    f"{name} ended before the end of the trace")
                ended = True
            except Exception as exc:  # noqa: BLE001 - raised again by finish, in order
                self._ended[name] = exc
                ended = True
        if ended:
            self._walks = [(name, walk) for name, walk in self._walks if name not in self._ended]
        if at is not None:
            self.replay.step(at)
        else:
            for name, _ in self._walks:
                self._ended[name] = RuntimeError(f"{name} did not end at the end of the trace")


def check_all(trace: Trace, config: RouterConfig, *, liveness: bool = True,
              first_only: bool = False) -> list[Violation]:
    """Every guarantee; ``liveness=False`` skips the end-of-trace checks for a cut-off trace
    (``bounded_wait`` still judges every request whose bound has passed), and ``first_only``
    stops at the first guarantee that fails (a shrinker only needs a yes or no)."""
    checking = Checking(config, liveness=liveness)
    checking.feed(trace)
    return checking.finish(first_only=first_only)


def assert_held(trace: Trace, config: RouterConfig) -> None:
    """For the laws: every guarantee holds on ``trace``, or the assertion lists what failed."""
    violations = check_all(trace, config)
    assert not violations, "\n".join(map(str, violations))
