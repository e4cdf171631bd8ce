"""The one place that decides loads and evictions: a FIFO queue with one entry per wanted model.

The queue is in arrival order: an entry's place is its oldest demand's (a client that leaves
takes its place with it). The head claims a free slot (count and memory on every device,
children still stopping included). When it does not fit, the least-recently-used *idle* models
are evicted, only as many as the queued entries need, and only when that makes room. Policies
differ only in which models may be victims and in whether a blocked queue falls back to force
eviction:

- ``fifo`` (default): victims are LOADED or SLEEPING, with no in-flight or waiting requests.
  When the idle ones are not enough, they and the least-recently-used busy models needed are
  marked *draining*: new requests for them queue behind the blocked entry instead of keeping
  them busy forever, so they drain in bounded time and are evicted idle (no starvation, no busy
  eviction). The drain keeps the models it chose until the entry has its room. A loading model
  is not drained: requests that come while it loads share its load.
- ``naive-lru``: the original router: any LOADED or SLEEPING model, busy or not.
- ``drain-timeout``: seed 004: idle victims, but after ``drain_timeout`` seconds blocked, the LRU
  busy model is force-evicted.

Under every policy a *pinned* model (``ModelSpec.pin``) is never a victim, drained or forced;
it still takes its slot and its memory. A model that cannot fit beside the pinned models that
run, whatever else stops, is refused at once (503, naming them): waiting would never end.

Groups (ROUTER.md 7, ``ModelSpec.group``), in use once any known model has one: a model with
none is then its own group. Before the head of the queue is spawned, every model *in its way*
must have exited (a child asked to stop counts until then): a model of another group that is
not persistent, or another member of its own group if that group is ``swap``. Those that are
idle are stopped at once (``SendExit.group`` names the model they make way for); busy ones
drain under every policy (never evicted busy); a loading one first serves its waiters. A
pinned model in the way is never stopped: the load is refused at once, like a pin that holds
the room. With no group anywhere nothing here changes a decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

from . import errors
from .commands import Command
from .config import RouterConfig
from .lifecycle import Status
from .state import Instance, Model, Request


class Effects(Protocol):
    """The scheduler decides; the core carries out. What the scheduler reads of the core's
    state, and the four things it asks the core to do (``RouterCore`` is the one
    implementation; the scheduler does not import it)."""

    @property
    def config(self) -> RouterConfig: ...
    @property
    def models(self) -> Mapping[str, Model]: ...
    @property
    def instances(self) -> Mapping[int, Instance]: ...
    @property
    def requests(self) -> Mapping[int, Request]: ...

    def spawn(self, model: Model, out: list[Command]) -> None:
        """Start a child for ``model``."""

    def join(self, model: Model, reqs: list[int], now: float, out: list[Command]) -> None:
        """Queued requests go to the model's child, or wait for its load."""

    def fail_waiters(self, reqs: list[int], status: int, kind: str, message: str,
                     out: list[Command]) -> None:
        """Answer queued requests with an error."""

    def stop(self, model: Model, now: float, out: list[Command], group: str | None = None
             ) -> None:
        """Stop the model's child (an eviction; ``group``: to make way for that model, outside
        whose group it is)."""


@dataclass(slots=True)
class Entry:
    """One queued model: the requests waiting for it, and whether the API asked to load it."""

    waiters: list[int] = field(default_factory=list)
    asked: bool = False
    place: int = 0  # arrival order of its oldest demand: the queue is sorted by it
    order: dict[int | None, int] = field(default_factory=dict)  # demand -> its arrival order


class Scheduler:
    def __init__(self, core: Effects) -> None:
        self.core = core
        self.queue: dict[str, Entry] = {}  # sorted by place: arrival order
        self.drain_deadline: float | None = None
        self.draining: set[str] = set()  # busy models that take no new requests until evicted
        self.making_way: set[str] = set()  # of those, the ones in the way of the head's group
        self._drained_before: set[str] = set()
        self._seq = 0
        config = core.config
        self.evict_busy = config.policy == "naive-lru"
        self.drain_fallback = config.policy == "drain-timeout"
        self.block_draining = config.policy == "fifo"
        self.drain_timeout = config.drain_timeout
        self.models_max: int | None = config.models_max or None  # 0 means unlimited
        self.devices = config.devices

    # -- the queue ---------------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def enqueue(self, name: str, req: int | None) -> None:
        """Queue a request for ``name`` (``None``: a load asked through the API or at startup).
        A model's entry takes the place of its oldest demand in arrival order."""
        entry = self.queue.get(name)
        if entry is None:
            entry = self.queue[name] = Entry()
        if req is None:
            entry.asked = True
            seq = entry.order.setdefault(None, self.next_seq())
        else:
            entry.waiters.append(req)
            seq = entry.order[req] = self.core.requests[req].seq
        self._place(entry, min(entry.order.values()))

    def dequeue(self, name: str, req: int) -> None:
        """A queued client left: it leaves the queue and costs nobody their slot, and its
        model's entry moves back to the place of the oldest demand it still has."""
        entry = self.queue[name]
        entry.waiters.remove(req)
        del entry.order[req]
        if not entry.waiters and not entry.asked:
            del self.queue[name]
        else:
            self._place(entry, min(entry.order.values()))

    def _place(self, entry: Entry, place: int) -> None:
        if len(entry.order) == 1 or place != entry.place:
            entry.place = place
            self.queue = dict(sorted(self.queue.items(), key=lambda item: item[1].place))

    # -- capacity ----------------------------------------------------------------------------

    def _counted(self, projected: bool) -> list[Model]:
        """The models whose children take capacity now (or, projected, once stopping ones exit)."""
        core = self.core
        out = []
        for inst in core.instances.values():
            if inst.download:  # a download child never takes a slot
                continue
            if inst.stopping and projected:  # a stop frees its slot only once the child exits
                continue
            out.append(core.models[inst.model])
        return out

    def _fits(self, model: Model, running: list[Model]) -> bool:
        if self.models_max is not None and len(running) + 1 > self.models_max:
            return False
        for device, capacity in self.devices.items():
            used = sum(self._need(m).get(device, 0) for m in running)
            if used + model.spec.memory.get(device, 0) > capacity:
                return False
        return True

    @staticmethod
    def _need(model: Model) -> Mapping[str, int]:
        """What a model takes: its child's need at spawn, or its spec's for a planned load."""
        inst = model.instance
        return inst.memory if inst is not None and not inst.download else model.spec.memory

    def fits_alone(self, model: Model) -> bool:
        """The model fits on every device with nothing else loaded (its spec may change)."""
        return all(model.spec.memory.get(d, 0) <= cap for d, cap in self.devices.items())

    def pinned_out(self, model: Model) -> list[str]:
        """The pinned models that leave ``model`` no room whatever else stops (by count or on
        some device), or that are in its group's way (never stopped for it), or ``[]`` when it
        can fit beside them (or fits nowhere: that is a 507)."""
        pinned = [m for m in self._counted(projected=True) if m.spec.pin and m is not model]
        if not pinned or not self.fits_alone(model):
            return []
        if not self._fits(model, pinned):
            return sorted(m.spec.name for m in pinned)
        if self.groups_on():
            return sorted(m.spec.name for m in pinned if self.in_the_way(model, m))
        return []

    def pinned_message(self, model: Model, pinned: list[str]) -> str:
        if self.groups_on() and any(self.in_the_way(model, self.core.models[name])
                                    for name in pinned if name in self.core.models):
            return (f"model {model.spec.name!r} cannot be loaded: the pinned models {pinned} "
                    f"run outside its group and are never stopped for it; unload one of them "
                    f"or unpin it")
        limit = f"--models-max {self.models_max}" if self.models_max is not None else "memory"
        return (f"model {model.spec.name!r} cannot be loaded: the pinned models {pinned} hold "
                f"all the room it needs ({limit}); unload one of them or unpin it")

    # -- groups ------------------------------------------------------------------------------

    def groups_on(self) -> bool:
        """Groups are in use: some model the router knows names one (else, ROUTER.md 7's "all
        off by default", no model is in another's way)."""
        return any(m.spec.group is not None for m in self.core.models.values())

    @staticmethod
    def in_the_way(model: Model, other: Model) -> bool:
        """``other`` must have exited before ``model`` loads (groups in use): it is outside
        ``model``'s group (a model with none is its own) and not in a persistent group, or it
        is another member of ``model``'s group and that group is ``swap``."""
        if other is model:
            return False
        mine, theirs = model.spec.group, other.spec.group
        if mine is not None and theirs is not None and mine.name == theirs.name:
            return mine.swap
        return theirs is None or not theirs.persistent

    def _way(self, model: Model) -> list[Model]:
        """The models whose children are in ``model``'s way (groups in use), those asked to
        stop included: each counts until it has exited."""
        if not self.groups_on():
            return []
        return [m for m in self._counted(projected=False) if self.in_the_way(model, m)]

    def _make_way(self, model: Model, way: list[Model], now: float,
                  out: list[Command]) -> None:
        """The models in ``model``'s way go: the idle ones now, the busy ones drain (whatever
        the policy: none is evicted busy), a loading one first serves its waiters."""
        for other in way:
            inst = other.instance
            if inst is None or inst.stopping or other.spec.pin:
                continue  # going already; a pin in the way refuses the load instead
            if other.status in (Status.LOADED, Status.SLEEPING) and not other.busy:
                self.core.stop(other, now, out, group=model.spec.name)
            elif other.status is not Status.LOADING:
                self.making_way.add(other.spec.name)

    def _refuse_pinned_out(self, out: list[Command]) -> None:
        """Queued models that pinned models now leave no room (one was pinned by a reload, or
        loaded ahead of them): their requests are refused rather than wait for ever."""
        if not any(m.spec.pin for m in self._counted(projected=True)):
            return
        for name, entry in list(self.queue.items()):
            model = self.core.models[name]
            pinned = [] if model.usable else self.pinned_out(model)
            if pinned:
                del self.queue[name]
                self.core.fail_waiters(entry.waiters, 503, errors.PINNED_OUT,
                                       self.pinned_message(model, pinned), out)

    def _victims(self, *, busy_too: bool) -> list[Model]:
        """Eviction candidates, least recently used first. A pinned model never is one."""
        out = []
        models = self.core.models
        for inst in self.core.instances.values():
            model = models[inst.model]
            if inst.stopping or inst.download or model.instance is not inst:
                continue
            if model.spec.pin:
                continue
            if model.status is Status.LOADING:  # loaded for its waiters: it serves them first
                continue
            if model.busy and not busy_too:
                continue
            out.append(model)
        out.sort(key=lambda m: m.last_used)
        return out

    # -- decisions ---------------------------------------------------------------------------

    def run(self, now: float, out: list[Command]) -> None:
        """Spawn what fits, in queue order; then evict what the blocked entries need."""
        # The plan below marks afresh what the blocked entry needs, keeping the models it
        # drained before: a drain that moved to whichever model was least recently used at
        # each step might never finish while traffic goes on.
        self._drained_before, self.draining = self.draining, set()
        self.making_way = set()
        self._refuse_pinned_out(out)
        if not self.queue:
            self.drain_deadline = None  # nothing is blocked any more
            return
        self._spawn_heads(now, out)
        # The victims' slots free up when their children exit, and the exit runs this again.
        blocked = self._plan_evictions(now, out) if self.queue else False
        self.draining |= self.making_way
        if blocked and self.drain_fallback:
            if self.drain_deadline is None:
                self.drain_deadline = now + self.drain_timeout
        else:
            self.drain_deadline = None

    def _spawn_heads(self, now: float, out: list[Command]) -> None:
        core = self.core
        while self.queue:
            name, entry = next(iter(self.queue.items()))
            model = core.models[name]
            if model.instance is not None:
                if model.usable:  # a child came back for it meanwhile: join it
                    del self.queue[name]
                    core.join(model, entry.waiters, now, out)
                    continue
                # its old child is still stopping: wait for the exit, making way meanwhile
                self._make_way(model, self._way(model), now, out)
                return
            if not self.fits_alone(model):
                del self.queue[name]
                core.fail_waiters(entry.waiters, 507, errors.INSUFFICIENT_MEMORY,
                                  f"model {name!r} needs more memory than a device has", out)
                continue
            way = self._way(model)
            if way:  # a child asked to stop is in the way until it has exited
                self._make_way(model, way, now, out)
                return
            if not self._fits(model, self._counted(projected=False)):
                return
            del self.queue[name]
            core.spawn(model, out)
            core.join(model, entry.waiters, now, out)

    def _plan_evictions(self, now: float, out: list[Command]) -> bool:
        """Evict LRU victims for the queued entries, in order; True if the queue is blocked.

        Victims are evicted only for the entries before the first one that cannot have its
        room yet. Under ``fifo``, that entry and every one behind it drain, in queue order, what
        each would need once those ahead have theirs: no model that a waiting request will need
        takes requests that came after it (the bound of ``properties.invariants.bounded_wait``).
        """
        running = self._counted(projected=True)
        victims = self._victims(busy_too=self.evict_busy)
        chosen: list[Model] = []
        blocked_entry: str | None = None
        self.draining.clear()
        groups = self.groups_on()
        for name in self.queue:
            model = self.core.models[name]
            if not self.fits_alone(model):
                continue
            if model.usable and model in running:
                continue  # a draining model: its child takes these requests when they come up
            if groups:  # what is in its group's way will have gone when it loads
                way = [m for m in running if self.in_the_way(model, m)]
                running = [m for m in running if m not in way]
                victims = [m for m in victims if m in running]
                if self.block_draining:
                    # ... and takes no request that came after this one's meanwhile (as a model
                    # the queue drains for its count or memory), even before it is the head's
                    self.draining.update(m.spec.name for m in way
                                         if m.status is not Status.LOADING)
            taken: list[Model] = []
            while not self._fits(model, running) and victims:
                victim = victims.pop(0)
                taken.append(victim)
                running.remove(victim)
            fits = self._fits(model, running)
            if fits and blocked_entry is None:
                chosen.extend(taken)
            elif not self.block_draining:
                blocked_entry = name
                break
            else:
                # Not now: the idle ones it takes wait for it (none is evicted yet), and the
                # busy ones it needs drain: neither takes new requests meanwhile.
                blocked_entry = blocked_entry or name
                self.draining.update(victim.spec.name for victim in taken)
                if not fits:
                    self._mark_draining(model, running)
            running.append(model)
        for victim in chosen:
            self._evict(victim, now, out)
        return blocked_entry is not None

    def _mark_draining(self, model: Model, running: list[Model]) -> None:
        """Pick the LRU busy models whose eviction would let ``model`` fit, and drain them. A
        loading model is not drained: requests that come while it loads share its load."""
        busy = [m for m in self._victims(busy_too=True) if m in running]
        busy.sort(key=lambda m: m.spec.name not in self._drained_before)  # stable: LRU after
        while busy and not self._fits(model, running):
            victim = busy.pop(0)
            running.remove(victim)
            self.draining.add(victim.spec.name)

    def _evict(self, victim: Model, now: float, out: list[Command]) -> None:
        self.core.stop(victim, now, out)

    def on_timer(self, now: float, out: list[Command]) -> None:
        if self.drain_deadline is None or now < self.drain_deadline:
            return
        self.drain_deadline = None
        victims = self._victims(busy_too=True)
        if victims:
            self._evict(victims[0], now, out)
        self.run(now, out)
