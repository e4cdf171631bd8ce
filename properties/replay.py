"""What a trace says about the router at each instant, rebuilt from the trace alone.

The invariant functions walk a trace entry by entry; before looking at an entry they read this
state (which children are alive, ready or stopping, which requests are open and where), then call
:meth:`Replay.step`. Nothing here reads the router's own state, so a trace recorded from a live
router is checked the same way as a simulated one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refimpl.core.commands import Forward, Kill, Publish, Reply, SendExit, Spawn
from refimpl.core.events import (EVENT_TYPES, ChildExited, ClientGone, RemoveAsked,
                                 RequestArrived, ResponseEnded, UnloadAsked)
from refimpl.core.trace import At, Item


@dataclass
class Child:
    instance: int
    model: str
    spawned: float
    ready: bool = False
    stop: str | None = None  # None, "evicted" or "unloaded": why the router stopped it
    waiters: set[int] = field(default_factory=set)  # requests it was loaded for
    served: int = 0  # responses that ended ok
    download: bool = False  # a download child: no slot, no requests, never evicted


@dataclass
class Req:
    req: int
    model: str
    arrived: float
    instance: int | None = None  # where it was forwarded
    answered: bool = False  # forwarded, replied or gone: the router is done deciding
    ended: bool = False  # no longer in flight or waiting


class Replay:
    def __init__(self, aliases: dict[str, str] | None = None) -> None:
        self.aliases = aliases or {}
        self.children: dict[int, Child] = {}  # alive, stopping ones included
        self.by_model: dict[str, Child] = {}  # the newest alive child of each model
        self.requests: dict[int, Req] = {}
        self._open: dict[str, set[int]] = {}  # model -> requests not yet forwarded or answered
        self._flight: dict[int, set[int]] = {}  # instance -> requests forwarded, not ended
        self.cause: Item | None = None  # the event the current commands answer
        self.now = 0.0

    def model_of(self, name: str | None) -> str:
        return self.aliases.get(name or "", name or "")

    def open_for(self, model: str) -> list[Req]:
        """Requests for ``model`` that wait for a load (not forwarded, not answered)."""
        return [self.requests[r] for r in sorted(self._open.get(model, ()))]

    def in_flight(self, instance: int) -> list[Req]:
        return [self.requests[r] for r in sorted(self._flight.get(instance, ()))]

    def _decided(self, r: Req) -> None:
        r.answered = True
        self._open.get(r.model, set()).discard(r.req)

    def _ended(self, r: Req) -> None:
        self._decided(r)
        r.ended = True
        if r.instance is not None:
            self._flight.get(r.instance, set()).discard(r.req)

    def first_stop(self, what: Item) -> Child | None:
        """The model child that ``what`` stops, if it is a stop command and the child's first one
        (download children end by the router's word once their work is done: not a stop)."""
        if not isinstance(what, (SendExit, Kill)):
            return None
        child = self.children.get(what.instance)
        return child if child is not None and child.stop is None and not child.download else None

    def stop_reason(self) -> str:
        return "unloaded" if isinstance(self.cause, (UnloadAsked, RemoveAsked)) else "evicted"

    def step(self, at: At) -> None:
        self.now = at.t
        what = at.what
        if isinstance(what, EVENT_TYPES):
            self.cause = what
        if isinstance(what, RequestArrived):
            model = self.model_of(what.model)
            self.requests[what.req] = Req(what.req, model, at.t)
            self._open.setdefault(model, set()).add(what.req)
            loading = self.by_model.get(model)
            if loading is not None and not loading.ready and loading.stop is None:
                loading.waiters.add(what.req)
        elif isinstance(what, Forward):
            r = self.requests.get(what.req)
            if r is not None:
                r.instance = what.instance
                self._flight.setdefault(what.instance, set()).add(what.req)
                self._decided(r)
        elif isinstance(what, (Reply, ClientGone)):
            r = self.requests.get(what.req)
            if r is not None:
                self._ended(r)
        elif isinstance(what, ResponseEnded):
            r = self.requests.get(what.req)
            if r is not None:
                self._ended(r)
                child = self.children.get(r.instance) if r.instance is not None else None
                if child is not None and what.ok:
                    child.served += 1
        elif isinstance(what, Spawn):
            child = Child(what.instance, what.model, at.t, download=what.download)
            if not what.download:
                child.waiters = {r.req for r in self.open_for(what.model)}
            self.children[what.instance] = child
            self.by_model[what.model] = child
        elif isinstance(what, Publish):
            child = self.by_model.get(what.model)
            if child is not None and what.data.get("status") == "loaded":
                child.ready = True
        elif isinstance(what, (SendExit, Kill)):
            child = self.children.get(what.instance)
            if child is not None and child.stop is None:
                child.stop = self.stop_reason()
        elif isinstance(what, ChildExited):
            child = self.children.pop(what.instance, None)
            self._flight.pop(what.instance, None)
            if child is not None and self.by_model.get(child.model) is child:
                del self.by_model[child.model]
