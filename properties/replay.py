"""What a trace says about the router at each instant, rebuilt from the trace alone.

The invariant functions walk a trace entry by entry; before looking at an entry they read this
state (which children are alive, ready or stopping, which requests and API calls are open and
where, which names the catalog knows and with which spec), then call :meth:`Replay.step`.
Nothing here reads the router's own state, so a trace recorded from a live router is checked the
same way as a simulated one.

:func:`history` runs a whole trace once and keeps, for every request, API call and child, when
each thing happened to it; the invariants that need the future of a request (its bound on
waiting) read that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from refimpl.core.commands import Forward, Kill, Log, Publish, RemoveFiles, Reply, SendExit, Spawn
from refimpl.core.config import Card, Group, ModelSpec, RouterConfig
from refimpl.core.events import (EVENT_TYPES, CatalogChanged, ChildExited, ChildOutput,
                                 ChildStarted, ClientGone, DownloadAsked, LoadAsked, RemoveAsked,
                                 RequestArrived, ResponseEnded, RouterStarted, UnloadAsked)
from refimpl.core.trace import At, Item

API_KINDS = {LoadAsked: "load", UnloadAsked: "unload", DownloadAsked: "download",
             RemoveAsked: "remove", CatalogChanged: "catalog"}


@dataclass
class Child:
    instance: int
    model: str
    spawned: float
    memory: Mapping[str, int] = field(default_factory=dict)  # the spec's need at spawn
    ready_at: float | None = None
    # None, or why the router stopped it: "evicted" (for room), "unloaded" (an API call or a
    # catalog change), "expired" (its idle TTL, ROUTER.md 7: an unload, not an eviction) or
    # "grouped" (to make way for a model whose group it is in the way of, ROUTER.md 7)
    stop: str | None = None
    stop_at: float | None = None
    exited_at: float | None = None
    waiters: set[int] = field(default_factory=set)  # requests it was loaded for (open at spawn)
    served: set[int] = field(default_factory=set)  # requests whose response ended ok
    download: bool = False  # a download child: no slot, no requests, never evicted
    seq: int = 0  # the index of its spawn in the trace
    place: tuple[float, float] = (0.0, 0)  # the queue place of the demand it was loaded for
    results: int = 0  # download_finished / download_failed published for it
    address: str | None = None  # where it serves (ChildStarted), if the world said

    @property
    def ready(self) -> bool:
        return self.ready_at is not None


@dataclass
class Req:
    """A proxied request (``kind == "request"``) or an API call (the other kinds)."""

    req: int
    model: str  # the model its name resolved to when it arrived (the name itself if unknown)
    arrived: float
    kind: str = "request"
    name: str | None = None  # the name as the client sent it
    known: bool = True  # the name resolved when it arrived
    autoload: bool | None = None
    instance: int | None = None  # where it was forwarded
    answered: bool = False  # forwarded, replied or gone: the router is done deciding
    decided_at: float | None = None
    ended: bool = False  # no longer in flight or waiting
    ended_at: float | None = None
    gone: bool = False  # its client left
    reply: Reply | None = None
    ok: bool | None = None  # for a forwarded request: did its response end ok
    seq: int = 0  # its index in the trace: with the time, its place in arrival order
    joined: int | None = None  # the child whose load it waits for, if any


class Replay:
    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config
        specs = config.models if config is not None else ()
        self.specs: dict[str, ModelSpec] = {s.name: s for s in specs}
        self.names: dict[str, str] = {n: s.name for s in specs for n in (s.name, *s.aliases)}
        self.children: dict[int, Child] = {}  # alive, stopping ones included
        self.every_child: dict[int, Child] = {}  # exited ones too
        self.last_download: dict[str, Child] = {}  # model -> its newest download child
        # model -> (time, index) of its download child's exit: its waiters join the queue then
        self.downloaded_at: dict[str, tuple[float, float]] = {}
        self.by_model: dict[str, Child] = {}  # the newest alive child of each model
        self.requests: dict[int, Req] = {}  # requests and API calls
        self.last_used: dict[str, float] = {}  # model -> when it last served or became ready
        self.asked: dict[str, float] = {}  # model -> when a load was asked for it (not yet spawned)
        self.asked_by: dict[str, float] = {}  # model -> index of the asked load's reply
        # model -> the index of the last event at whose start pinned models left its asked load
        # no room: the router drops such a queue entry when it next runs (ROUTER.md 7, pin),
        # and no command says so, so from then on the load may be gone
        self.pinned_asks: dict[str, int] = {}
        self._open: dict[str, set[int]] = {}  # model -> requests not yet forwarded or answered
        self._flight: dict[int, set[int]] = {}  # instance -> requests forwarded, not ended
        # A catalog change is applied at once and undone if the router refuses it (400).
        self._catalog_undo: tuple[int, dict[str, ModelSpec], dict[str, str], dict[str, float],
                                  dict[str, float], set[str]] | None = None
        self.cause: Item | None = None  # the event the current commands answer
        self.removed_now: tuple[str, ...] = ()  # what the last catalog change removed
        # models whose spec the trace itself gave (a catalog change, a download), not only the
        # checker's configuration (which may lack what a live router's sources said)
        self.from_trace: set[str] = set()
        self.now = 0.0
        self.index = 0  # entries stepped so far: with the time, a place in the trace

    # -- questions the invariants ask --------------------------------------------------------

    def model_of(self, name: str | None) -> str:
        return self.names.get(name or "", name or "")

    def open_for(self, model: str) -> list[Req]:
        """Requests for ``model`` that wait for a load (not forwarded, not answered)."""
        return [self.requests[r] for r in sorted(self._open.get(model, ()))]

    def in_flight(self, instance: int) -> list[Req]:
        return [self.requests[r] for r in sorted(self._flight.get(instance, ()))]

    def usable(self, model: str) -> Child | None:
        """The model's child that new requests may go to (alive, not stopping), if any."""
        child = self.by_model.get(model)
        return child if child is not None and child.stop is None and not child.download else None

    def downloading(self, model: str) -> bool:
        child = self.by_model.get(model)
        return child is not None and child.download

    def idle(self, child: Child) -> bool:
        """Ready, not stopping, nothing in flight, and no request waits for its model."""
        return (child.ready and child.stop is None and not child.download
                and not self._flight.get(child.instance) and not self._open.get(child.model)
                and child.model not in self.asked)

    def demand(self) -> dict[str, tuple[float, float]]:
        """Models that wait for a load (open requests or an asked load, no usable child, not
        downloading), each with its place in the queue: the (time, trace index) of its oldest
        demand. A request that waited for a download joins the queue when the download child
        exits. A model that can never load now waits for nothing: one too big for a device
        (507), or one that pinned models leave no room or block its group's way (503,
        ROUTER.md 7: its requests are refused, and its asked load is dropped, once pins crowd
        it out: :meth:`pinned_out`)."""
        out: dict[str, tuple[float, float]] = {}
        never = (float("-inf"), 0)
        known = set(self.names.values())  # a removed model's requests wait for their error
        for model, reqs in self._open.items():
            live = [self.requests[r] for r in reqs if self.requests[r].kind == "request"
                    and not self.doomed(self.requests[r])]
            if live and model in known and self.usable(model) is None \
                    and not self.downloading(model) and not self.too_big(model) \
                    and not self.pinned_out(model):  # (those two are refused, never loaded)
                joined = self.downloaded_at.get(model, never)
                out[model] = min(max((r.arrived, r.seq), joined) for r in live)
        for model, t in self.asked.items():
            if self.usable(model) is None and not self.downloading(model) \
                    and not self.too_big(model) and model not in self.pinned_asks \
                    and not self.pinned_out(model):
                place = max((t, self.asked_by.get(model, 0)), self.downloaded_at.get(model, never))
                out[model] = min(out.get(model, place), place)
        return out

    def doomed(self, r: Req) -> bool:
        """It waits for a load that was stopped: its error comes when that child exits."""
        child = self.children.get(r.joined) if r.joined is not None else None
        return child is not None and child.stop is not None and not child.ready

    def too_big(self, model: str) -> bool:
        """The model's spec needs more than some device has: it can never load."""
        if self.config is None:
            return False
        spec = self.specs.get(model)
        memory = spec.memory if spec is not None else {}
        return any(memory.get(d, 0) > cap for d, cap in self.config.devices.items())

    def pinned(self, model: str) -> bool:
        """The model's spec in force says ``pin = true`` (ROUTER.md 7)."""
        spec = self.specs.get(model)
        return spec is not None and spec.pin

    def pinned_running(self, besides: str) -> list[Child]:
        """The pinned models' children that take room and are not asked to stop (but
        ``besides``'s)."""
        return [c for c in self.children.values() if not c.download and c.stop is None
                and c.model != besides and self.pinned(c.model)]

    def pinned_out(self, model: str) -> list[str]:
        """The pinned models that leave ``model`` no room whatever else stops (by count or on
        some device), or else those that run in its group's way (a pin is never stopped for a
        group), sorted; ``[]`` when it fits beside them and none is in its way, or when it fits
        on no device at all (a 507). Such a model is refused 503 ``pinned_models_full``
        (ROUTER.md 7, pin)."""
        if self.config is None:
            return []
        pinned = self.pinned_running(model)
        if not pinned or self.too_big(model):
            return []
        spec = self.specs.get(model)
        need = spec.memory if spec is not None else {}
        by_count = bool(self.config.models_max) and len(pinned) + 1 > self.config.models_max
        by_memory = any(sum(c.memory.get(d, 0) for c in pinned) + need.get(d, 0) > cap
                        for d, cap in self.config.devices.items())
        if by_count or by_memory:
            return sorted(c.model for c in pinned)
        return sorted(c.model for c in pinned if self.in_way(model, c.model))

    # -- groups (ROUTER.md 7) ----------------------------------------------------------------

    def groups_on(self) -> bool:
        """Groups are in use: some model the trace knows names one. Only then is a model
        without one its own group ("all off by default": else nothing is in any model's way)."""
        return any(spec.group is not None for spec in self.specs.values())

    def in_way(self, model: str, other: str) -> bool:
        """``other``'s child must have exited before ``model``'s starts (groups in use):
        ``other`` is of another group that is not persistent, or another member of
        ``model``'s group and that group is ``swap``. Stated from the specs alone, not
        imported from the scheduler."""
        if other == model or not self.groups_on():
            return False
        mine, theirs = self._group(model), self._group(other)
        if mine is not None and theirs is not None and mine.name == theirs.name:
            return mine.swap
        return theirs is None or not theirs.persistent

    def _group(self, model: str) -> Group | None:
        spec = self.specs.get(model)
        return spec.group if spec is not None else None

    def running_in_way(self, model: str) -> list[Child]:
        """The model children alive in ``model``'s way, those asked to stop included: each
        counts until it has exited."""
        return [c for c in self.children.values()
                if not c.download and self.in_way(model, c.model)]

    def waiting(self) -> int:
        """Requests that wait (ROUTER.md 7, queue limit): arrived for a known model, neither
        forwarded nor answered, client still there; for a download, in the queue, for a load
        or in line on a child at its concurrency."""
        return sum(len(reqs) for reqs in self._open.values())

    def stop_timeout(self) -> float:
        return max((s.stop_timeout for s in self.specs.values()), default=10.0)

    def first_stop(self, what: Item) -> Child | None:
        """The model child that ``what`` stops, if it is a stop command and the child's first one
        (download children end by the router's word once their work is done: not a stop)."""
        if not isinstance(what, (SendExit, Kill)):
            return None
        child = self.children.get(what.instance)
        return child if child is not None and child.stop is None and not child.download else None

    def stop_reason(self, what: Item) -> str:
        """Why the router stops a child with ``what`` (its first stop command), now: an exit
        command that names the model it makes way for (``SendExit.group``) is ``"grouped"``
        (ROUTER.md 7: loading a model "first stops every running model outside its group"),
        whatever event it answers; else an API call or a catalog change unloads it; an exit
        command marked ``expired`` is its idle TTL (ROUTER.md 7: "unloaded, as an unload the
        router asked for"), not an eviction; any other stop is the scheduler's eviction."""
        if isinstance(what, SendExit) and what.group is not None:
            return "grouped"
        if isinstance(self.cause, (UnloadAsked, RemoveAsked, CatalogChanged)):
            return "unloaded"
        if isinstance(what, SendExit) and what.expired:
            return "expired"
        return "evicted"

    # -- bookkeeping -------------------------------------------------------------------------

    def _decided(self, r: Req) -> None:
        if not r.answered:
            r.answered = True
            r.decided_at = self.now
        self._open.get(r.model, set()).discard(r.req)

    def _ended(self, r: Req) -> None:
        self._decided(r)
        if not r.ended:
            r.ended = True
            r.ended_at = self.now
        if r.instance is not None:
            self._flight.get(r.instance, set()).discard(r.req)

    def _forget_names(self, model: str) -> None:
        for name in [n for n, m in self.names.items() if m == model]:
            del self.names[name]

    def vanishing(self, event: CatalogChanged) -> tuple[str, ...]:
        """The models a catalog change removes, in the state before it: those it names, and on
        a reload every known model that the sources no longer name (unless downloading)."""
        if not event.reload:
            return event.removed
        named = {spec.name for spec in event.specs}
        return (*event.removed, *sorted({m for m in self.names.values()
                                         if m not in named and not self.downloading(m)}))

    def _apply_catalog(self, what: CatalogChanged) -> None:
        if what.req is not None:
            self._catalog_undo = (what.req, dict(self.specs), dict(self.names),
                                  dict(self.asked), dict(self.asked_by), set(self.from_trace))
        self.removed_now = self.vanishing(what)
        for name in self.removed_now:
            if not self.downloading(name):
                self._forget_names(name)
                self._drop_ask(name)  # its queue entry goes with it
        for spec in what.specs:
            child = self.by_model.get(spec.name)
            if child is not None and child.download and not child.results:
                continue  # still downloading: the router leaves it alone
            old = self.specs.get(spec.name)
            if old is not None:
                self._forget_names(spec.name)
            self.specs[spec.name] = spec
            self.from_trace.add(spec.name)
            for name in (spec.name, *spec.aliases):
                self.names[name] = spec.name

    def step(self, at: At) -> None:
        self.now = at.t
        self.index += 1
        what = at.what
        kind = type(what)
        if self.asked and kind in EVENT_TYPES:
            self._note_pinned_asks()
        if kind is ChildOutput:  # most of a trace: what a child wrote changes nothing here
            self.cause = what
            return
        if kind is Log or kind is RemoveFiles:
            return
        if kind in EVENT_TYPES:
            self.cause = what
        if isinstance(what, RequestArrived):
            known = bool(what.model) and what.model in self.names
            model = self.model_of(what.model)
            self.requests[what.req] = Req(what.req, model, at.t, name=what.model, known=known,
                                          autoload=what.autoload, seq=self.index)
            if known:
                self._open.setdefault(model, set()).add(what.req)
                loading = self.by_model.get(model)
                if loading is not None and not loading.ready and loading.stop is None \
                        and not loading.download:
                    self.requests[what.req].joined = loading.instance
        elif type(what) in API_KINDS:
            assert isinstance(what, (LoadAsked, UnloadAsked, DownloadAsked, RemoveAsked,
                                     CatalogChanged))
            if isinstance(what, CatalogChanged):
                self._apply_catalog(what)
                if what.req is not None:
                    self.requests[what.req] = Req(what.req, "*", at.t, kind="catalog")
            else:
                name = what.model
                known = bool(name) and name in self.names
                r = Req(what.req, self.model_of(name), at.t, kind=API_KINDS[type(what)],
                        name=name, known=known, seq=self.index)
                self.requests[what.req] = r
                if isinstance(what, RemoveAsked) and known:
                    self._forget_names(r.model)  # unresolvable from now on
        elif isinstance(what, Forward):
            fwd = self.requests.get(what.req)
            if fwd is not None:
                fwd.instance = what.instance
                self._flight.setdefault(what.instance, set()).add(what.req)
                self._decided(fwd)
            self.last_used[what.model] = at.t
        elif isinstance(what, Reply):
            answered = self.requests.get(what.req)
            if answered is not None:
                answered.reply = what
                self._ended(answered)
                self._on_api_reply(answered, what)
        elif isinstance(what, ClientGone):
            left = self.requests.get(what.req)
            if left is not None:
                left.gone = True
                if left.instance is not None:
                    self.last_used[left.model] = at.t
                self._ended(left)
        elif isinstance(what, ResponseEnded):
            done = self.requests.get(what.req)
            if done is not None:
                done.ok = what.ok
                self._ended(done)
                self.last_used[done.model] = at.t
                server = self.children.get(done.instance) if done.instance is not None else None
                # Served: it ended ok, or with the child's own error while the child lived on.
                if server is not None and (what.ok or server.stop is None):
                    server.served.add(done.req)
        elif isinstance(what, RouterStarted):
            # The startup loads queue in the configuration's order, all before the next entry.
            startup = [spec.name for spec in self.specs.values() if spec.load_on_startup]
            for k, name in enumerate(startup):
                self.asked.setdefault(name, at.t)
                self.asked_by.setdefault(name, self.index + k / len(startup))
        elif isinstance(what, Spawn):
            need = self.specs.get(what.model)
            child = Child(what.instance, what.model, at.t, download=what.download,
                          memory=dict(need.memory) if need is not None and not what.download
                          else {})
            child.seq = self.index
            self.every_child[what.instance] = child
            if what.download:
                self.last_download[what.model] = child
            if not what.download:
                child.waiters = {r.req for r in self.open_for(what.model)}
                for r in self.open_for(what.model):
                    r.joined = what.instance
                child.place = self.demand().get(what.model, (at.t, self.index))
                self._drop_ask(what.model)
            self.children[what.instance] = child
            self.by_model[what.model] = child
        elif isinstance(what, Publish):
            current = self.by_model.get(what.model)
            if current is not None and what.data.get("status") == "loaded":
                if current.ready_at is None:
                    current.ready_at = at.t
                self.last_used[what.model] = at.t
            elif what.event in ("download_finished", "download_failed") \
                    and what.model in self.last_download:
                self.last_download[what.model].results += 1
            elif what.event == "model_remove":
                self._forget_names(what.model)
                self.specs.pop(what.model, None)
                self._drop_ask(what.model)
        elif isinstance(what, (SendExit, Kill)):
            stopped = self.children.get(what.instance)
            if stopped is not None and stopped.stop is None:
                stopped.stop = self.stop_reason(what)
                stopped.stop_at = at.t
                if stopped.stop == "unloaded" and isinstance(self.cause, (UnloadAsked,
                                                                          RemoveAsked)):
                    self._drop_ask(stopped.model)
        elif isinstance(what, ChildStarted):
            started = self.children.get(what.instance)
            if started is not None:
                started.address = what.address
        elif isinstance(what, ChildExited):
            exited = self.children.pop(what.instance, None)
            self._flight.pop(what.instance, None)
            if exited is not None:
                exited.exited_at = at.t
                if exited.download:
                    self.downloaded_at[exited.model] = (at.t, self.index)
                if self.by_model.get(exited.model) is exited:
                    del self.by_model[exited.model]

    def _note_pinned_asks(self) -> None:
        for model in self.asked:
            if self.usable(model) is None and self.pinned_out(model):
                self.pinned_asks[model] = self.index

    def _drop_ask(self, model: str) -> None:
        self.asked.pop(model, None)
        self.asked_by.pop(model, None)
        self.pinned_asks.pop(model, None)

    def history(self) -> History:
        """What the entries stepped so far did to every request, API call and child: at the
        end of a trace, :func:`history` of it."""
        return History(self.requests, self.every_child, self.now)

    def _on_api_reply(self, r: Req, reply: Reply) -> None:
        if r.kind == "load" and reply.status == 200:
            self.asked.setdefault(r.model, self.now)
            self.asked_by.setdefault(r.model, self.index)
        elif r.kind == "download" and reply.status == 200:
            self.specs.setdefault(r.model, ModelSpec(r.model, card=Card(source="cache")))
            self.from_trace.add(r.model)
            self.names[r.model] = r.model
        elif r.kind == "catalog" and reply.status != 200 and self._catalog_undo is not None \
                and self._catalog_undo[0] == r.req:
            _, self.specs, self.names, self.asked, self.asked_by, self.from_trace = \
                self._catalog_undo
        if r.kind == "catalog":
            self._catalog_undo = None


@dataclass
class History:
    """A whole trace, replayed once: every request, API call and child, with its times."""

    requests: dict[int, Req]
    children: dict[int, Child]
    end: float


def history(trace: Iterable[At], config: RouterConfig | None = None) -> History:
    replay = Replay(config)
    for at in trace:
        replay.step(at)
    return replay.history()
