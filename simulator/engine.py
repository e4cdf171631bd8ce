"""The event loop of a simulation: a heap ordered by (virtual time, sequence number).

No wall clock anywhere: time jumps from one scheduled action to the next, and every random draw
(arrivals, load times, faults, how child output is chunked) comes from one ``random.Random``, so
one seed replays one run exactly. The router core is the real one, driven as the live router
drives it.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from refimpl.core.commands import (Command, Forward, Kill, Listed, ModelView, RemoveFiles, Reply,
                                   SendExit, Spawn)
from refimpl.core.config import RouterConfig
from refimpl.core.config import ModelSpec
from refimpl.core.events import (CatalogChanged, ChildStarted, ClientGone, DownloadAsked, Event,
                                 ListAsked, LoadAsked, RemoveAsked, RequestArrived, ResponseEnded, RouterStarted,
                                 TimerFired, UnloadAsked)
from refimpl.core.router import RouterCore
from refimpl.core.trace import At

from .children import SimChild, SimDownloadChild
from .faults import Faults
from .summary import Summary
from .workloads import Arrival, Workload


@dataclass
class SimResult:
    summary: Summary
    trace: list[At] | None
    end: float  # virtual time the run stopped at
    pending: list[int]  # requests never answered (lost)


@dataclass(slots=True)
class _Open:
    """A request the simulated client is still waiting on."""

    model: str
    service: float
    instance: int | None = None


class Simulation:
    """One run: ``config`` for the core, arrivals from ``workload``, misbehaviour from ``faults``.

    Arrivals stop at ``duration``; the run then goes on for at most ``drain`` more virtual seconds,
    plus the service time of every request that arrived (the work one child would take to serve
    them one by one: a workload can offer more than the children can serve while it runs, as
    long streams to models with a concurrency limit do), so that every request can finish
    (faults never start after ``faults.until``).
    """

    def __init__(self, config: RouterConfig, workload: Workload | None, faults: Faults,
                 rng: random.Random, *, duration: float, drain: float = 600.0,
                 record: bool = True, chunk_rng: random.Random | None = None) -> None:
        self.config = config
        self.faults = faults
        self.rng = rng
        # How child output is cut into reads; separate so that a hypothesis-driven ``rng`` need
        # not spend a draw on every byte boundary.
        self.chunk_rng = chunk_rng if chunk_rng is not None else rng
        self.duration = duration
        self.deadline = duration + drain
        self.core = RouterCore(config)
        self.now = 0.0
        self.trace: list[At] | None = [] if record else None
        self.summary = Summary(config)
        self.children: dict[int, SimChild] = {}
        self.cache: dict[str, str] = {}  # downloaded model -> "partial" | "complete" files
        self.open: dict[int, _Open] = {}
        self._heap: list[tuple[float, int, Callable[[Any], object], Any]] = []
        self._seq = 0
        self._timer_at: float | None = None
        self._next_req = 1
        self._arrivals: Iterator[Arrival] | None = (
            workload.arrivals(rng, duration) if workload is not None else None)

    # -- scheduling ----------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[Any], object], arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn, arg))

    def step(self) -> bool:
        """Run the next scheduled action; False when nothing is left before the deadline."""
        if not self._heap or self._heap[0][0] > self.deadline:
            return False
        t, _, fn, arg = heapq.heappop(self._heap)
        self.now = t
        fn(arg)
        return True

    def run_until(self, t: float) -> None:
        """Run every action scheduled up to and including virtual time ``t``."""
        while self._heap and self._heap[0][0] <= t and self.step():
            pass
        self.now = max(self.now, t)

    def run(self) -> SimResult:
        self.start()
        while self.step():
            pass
        return self.result()

    def start(self) -> None:
        self.at(0.0, self.deliver, RouterStarted())
        self._next_arrival()

    def result(self) -> SimResult:
        return SimResult(self.summary, self.trace, self.now, sorted(self.open))

    # -- the router side -----------------------------------------------------------------------

    def deliver(self, event: Event) -> list[Command]:
        """Hand one event to the core, then carry out the commands it returns (and return
        them)."""
        now = self.now
        trace, observe = self.trace, self.summary.observe
        if trace is not None:
            trace.append(At(now, event))
        observe(now, event)
        if type(event) is ResponseEnded:
            self.open.pop(event.req, None)
        commands = self.core.handle(event, now)
        for command in commands:
            if trace is not None:
                trace.append(At(now, command))
            observe(now, command)
            self._execute(command)
        timer = self.core.next_timer()
        if timer is not None and timer != self._timer_at:
            self._timer_at = timer
            self.at(max(timer, now), self._fire_timer, timer)
        return commands

    def _fire_timer(self, t: float) -> None:
        if t == self._timer_at:
            self._timer_at = None
            self.deliver(TimerFired())

    def _execute(self, command: Command) -> None:
        kind = type(command)
        if kind is Forward:
            assert isinstance(command, Forward)
            request = self.open.get(command.req)
            child = self.children.get(command.instance)
            if request is None:
                return
            request.instance = command.instance
            if child is None:
                self.at(self.now, self._refused, command.req)
            else:
                child.serve(command.req, request.service)
        elif kind is Reply:
            assert isinstance(command, Reply)
            self.open.pop(command.req, None)
        elif kind is Spawn:
            assert isinstance(command, Spawn)
            cls = SimDownloadChild if command.download else SimChild
            child = cls(self, command.instance, command.model)
            self.children[command.instance] = child
            # its process runs: the router hears where it serves before any of its output
            self.at(self.now, self.deliver, ChildStarted(command.instance,
                                                         f"sim:{command.instance}"))
            child.start()
        elif kind is SendExit:
            assert isinstance(command, SendExit)
            self.children[command.instance].exit_command()
        elif kind is Kill:
            assert isinstance(command, Kill)
            self.children[command.instance].kill()
        elif kind is RemoveFiles:
            assert isinstance(command, RemoveFiles)
            self.cache.pop(command.model, None)

    def _refused(self, req: int) -> None:
        self.deliver(ResponseEnded(req, ok=False))

    # -- the client side -----------------------------------------------------------------------

    def _next_arrival(self) -> None:
        if self._arrivals is None:
            return
        arrival = next(self._arrivals, None)
        if arrival is not None:
            self.at(arrival.t, self._arrive, arrival)

    def _arrive(self, arrival: Arrival) -> None:
        self.deadline += arrival.service
        self._next_arrival()
        self.request(arrival.model, arrival.service, arrival.patience)

    def request(self, model: str | None, service: float, patience: float | None = None,
                autoload: bool | None = None) -> int:
        """A client sends a request now; returns its id."""
        req = self._next_req
        self._next_req += 1
        self.open[req] = _Open(model or "", service)
        if patience is not None:
            self.at(self.now + patience, self.give_up, req)
        self.deliver(RequestArrived(req, model, autoload))
        return req

    def give_up(self, req: int) -> None:
        """The client of ``req`` disconnects, if it is still waiting."""
        request = self.open.pop(req, None)
        if request is None:
            return
        if request.instance is not None:
            child = self.children.get(request.instance)
            if child is not None:
                child.cancel(req)
        self.deliver(ClientGone(req))

    # -- an operator and a chaos monkey, for scripted scenarios and stateful tests ---------------

    def api(self, event_type: type[LoadAsked] | type[UnloadAsked] | type[DownloadAsked]
            | type[RemoveAsked], model: str) -> int:
        """``POST /models/load``, ``/models/unload``, ``/models`` (download) or ``DELETE /models``
        now; returns the id of the API call."""
        req = self._next_req
        self._next_req += 1
        self.deliver(event_type(req, model))
        return req

    def catalog(self, specs: tuple[ModelSpec, ...], removed: tuple[str, ...] = (),
                reload: bool = False) -> int:
        """A catalog change now, with the sources saying ``specs`` and ``removed`` (``reload``:
        ``GET /models?reload=1``, the sources read whole); returns the id of the call."""
        req = self._next_req
        self._next_req += 1
        self.deliver(CatalogChanged(specs, removed, req, reload))
        return req

    def list_models(self) -> tuple[ModelView, ...]:
        """``GET /models`` now: what the router lists."""
        req = self._next_req
        self._next_req += 1
        listed = [c for c in self.deliver(ListAsked(req)) if isinstance(c, Listed)]
        assert len(listed) == 1, listed
        return listed[0].models

    def child_of(self, model: str) -> SimChild | None:
        """The newest child of ``model`` that is still alive."""
        alive = [c for c in self.children.values() if c.model == model and c.alive]
        return alive[-1] if alive else None

    def has_live_child(self) -> bool:
        return any(child.alive for child in self.children.values())

    def crash(self, model: str, code: int = 137) -> bool:
        child = self.child_of(model)
        if child is None:
            return False
        self.at(self.now, child.crash, code)
        return True
