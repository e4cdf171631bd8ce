"""The router core: events in, commands out, time passed in. No I/O, no clock, no randomness.

Both the live router and the simulator drive this one class. ``handle(event, now)`` returns the
commands that the event calls for; ``next_timer()`` says when the core next wants ``TimerFired``.

State kept here, per model: its status, its current child (an *instance*; at most one per model,
a new one only after the old one has exited), and the requests that hold a reference to it
(waiting for its load or forwarded to it). Requests for a model with no usable child wait in the
scheduler's FIFO queue, one entry per model.

Policies (ROUTER.md section 7, all off by default): a model idle for its TTL is unloaded
(``next_timer`` wakes the core for it; its ``SendExit`` says ``expired``); a model's
``concurrency`` caps the requests in flight to its child, and the others wait *in line* on the
model, in arrival order (they keep it busy); ``--queue-max`` caps the requests that wait (in
every phase but forwarded) and answers one more with 429. Pins and groups are the scheduler's
business; a reload that changes a model's group publishes ``group_change``.

Downloads (``POST /models``) run in a *download child*: its model is DOWNLOADING, then
DOWNLOADED, and when the child has exited it becomes an ordinary UNLOADED cache model. A download
child never counts against the limits and is never evicted. Requests for a model still
downloading wait outside the queue (a download must not block other models) and join it when the
download is done; a failed or cancelled download leaves nothing behind: its files are removed and
the model is forgotten.
"""

from __future__ import annotations

from typing import Any

from . import errors
from .commands import (Command, Forward, Kill, Listed, Log, ModelView, Publish, RemoveFiles,
                       Reply, SendExit, Spawn)
from .config import Card, ModelSpec, RouterConfig
from .events import (CatalogChanged, ChildExited, ChildOutput, ChildStarted, ClientGone,
                     DownloadAsked, Event, ListAsked, LoadAsked, RemoveAsked, RequestArrived,
                     ResponseEnded, RouterStarted, TimerFired, UnloadAsked)
from .lifecycle import Status, check_transition
from .protocol import (DownloadProgress, DownloadResult, LoadingState, LogLine,
                       Overlong, ReadyState, Rejection, SleepingState, parse_line,
                       progress_payload)
from .scheduler import Scheduler
from .state import Instance, Model, Phase, Request

__all__ = ["Instance", "Model", "Phase", "Request", "RouterCore"]


class RouterCore:
    """The sans-IO router. See the module docstring."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.models: dict[str, Model] = {}
        self.names: dict[str, str] = {}  # name or alias -> model name
        for spec in config.models:
            self.add_model(spec)
        self.instances: dict[int, Instance] = {}  # alive children, stopping ones included
        self.requests: dict[int, Request] = {}
        self.scheduler = Scheduler(self)
        self._next_instance = 1

    # -- registry ----------------------------------------------------------------------------

    def add_model(self, spec: ModelSpec) -> None:
        """Add a model, or give a known one a new spec (it takes effect at its next load)."""
        for name in (spec.name, *spec.aliases):
            owner = self.names.get(name)
            if owner is not None and owner != spec.name:
                raise ValueError(f"name {name!r} already belongs to model {owner!r}")
        old = self.models.get(spec.name)
        if old is None:
            self.models[spec.name] = Model(spec)
        else:
            for alias in old.spec.aliases:
                if self.names.get(alias) == spec.name:  # it may belong to another model now
                    del self.names[alias]
            old.spec = spec
        for name in (spec.name, *spec.aliases):
            self.names[name] = spec.name

    def _catalog_clash(self, event: CatalogChanged) -> str | None:
        """Why ``event`` cannot be applied (a name or alias of two models), or None."""
        changed = {spec.name for spec in event.specs} | set(event.removed)
        # The names that resolve now: a model that vanished or is being removed has none left,
        # though it stays known until its child has exited.
        owners = {alias: name for alias, name in self.names.items()
                  if name not in changed or self.models[name].downloading}
        for spec in event.specs:
            known = self.models.get(spec.name)
            if known is not None and known.status is Status.DOWNLOADING:
                continue
            for alias in (spec.name, *spec.aliases):
                owner = owners.setdefault(alias, spec.name)
                if owner != spec.name:
                    return (f"name {alias!r} of model {spec.name!r} already belongs to model "
                            f"{owner!r}")
        return None

    def _on_catalog(self, event: CatalogChanged, now: float, out: list[Command]) -> None:
        reload = event.reload
        if reload:  # what the sources no longer name vanished
            named = {spec.name for spec in event.specs}
            event = CatalogChanged(event.specs, (*event.removed, *(
                name for name, m in self.models.items()
                if name not in named and not m.downloading and not m.vanished)), event.req)
        clash = self._catalog_clash(event)
        if clash is not None:
            if event.req is not None:
                out.append(Reply(event.req, 400, errors.INVALID_REQUEST, clash))
            return
        for spec in event.specs:  # their names are given anew below (the clash check passed)
            changing = self.models.get(spec.name)
            if changing is not None and changing.status is not Status.DOWNLOADING:
                for alias in (spec.name, *changing.spec.aliases):
                    if self.names.get(alias) == spec.name:
                        del self.names[alias]
        for name in event.removed:
            model = self.models.get(name)
            if model is None or model.downloading:
                continue
            for alias in (name, *model.spec.aliases):  # no new request can reach it
                if self.names.get(alias) == name:
                    del self.names[alias]
            entry = self.scheduler.queue.pop(name, None)
            if entry is not None:
                self.fail_waiters(entry.waiters, 404, errors.REMOVED,
                                  f"model {name!r} is no longer in the model sources", out)
            model.vanished = True
            if model.instance is None:
                self._forget(model)
                out.append(Publish(name, "model_remove"))
            else:
                self.stop(model, now, out)
        for spec in event.specs:
            model = self.models.get(spec.name)
            if model is not None and model.status is Status.DOWNLOADING:
                continue  # its download child says how it ends
            old = model.spec if model is not None else None
            self.add_model(spec)
            model = self.models[spec.name]
            model.vanished = False
            if old is not None and self._policies(old) != self._policies(spec):
                out.append(Publish(spec.name, "policy_change", self._policies(spec)))
            if old is not None and old.group != spec.group:
                out.append(Publish(spec.name, "group_change", self._group(spec)))
            if old is not None and old.launch != spec.launch and model.usable:
                self.stop(model, now, out)  # a stale child: the next load starts the new one
            else:
                self._next_in_line(model, now, out)  # its concurrency may have grown
        if event.req is not None:
            out.append(Reply(event.req, 200, errors.OK))
        if reload:
            out.append(Publish("*", "models_reload"))
        self.scheduler.run(now, out)

    def _forget(self, model: Model) -> None:
        name = model.spec.name
        del self.models[name]
        for alias in (name, *model.spec.aliases):
            if self.names.get(alias) == name:
                del self.names[alias]
        self.scheduler.queue.pop(name, None)
        self.scheduler.draining.discard(name)

    def _policies(self, spec: ModelSpec) -> dict[str, Any]:
        """What ``GET /models`` shows of the policies a model runs under, and what a
        ``policy_change`` event publishes when a catalog change alters them."""
        return {"ttl": self.config.ttl_of(spec), "pinned": spec.pin,
                "concurrency": spec.concurrency}

    @staticmethod
    def _group(spec: ModelSpec) -> dict[str, Any]:
        """What a ``group_change`` event publishes when a catalog change alters a model's
        group or its group's settings (``group`` None: it is its own group now)."""
        group = spec.group
        return {"group": None if group is None else group.name,
                "swap": group is not None and group.swap,
                "persistent": group is not None and group.persistent}

    def _view(self, model: Model) -> ModelView:
        spec = model.spec
        return ModelView(spec.name, spec.aliases, model.status.value, spec.card, model.failed,
                         model.exit_code if model.failed else None, model.info,
                         self.config.ttl_of(spec), spec.pin, spec.concurrency,
                         None if spec.group is None else spec.group.name)

    def resolve(self, name: str | None) -> str | None:
        return None if name is None else self.names.get(name)

    # -- the two entry points ----------------------------------------------------------------

    def next_timer(self) -> float | None:
        deadlines = [i.kill_at for i in self.instances.values() if i.kill_at is not None]
        drain = self.scheduler.drain_deadline
        if drain is not None:
            deadlines.append(drain)
        deadlines.extend(t for t in map(self._expiry, self.instances.values()) if t is not None)
        return min(deadlines) if deadlines else None

    def _expiry(self, inst: Instance) -> float | None:
        """When the model of child ``inst`` is to be unloaded for idleness: its TTL after its
        last use, if it has a TTL and is idle now (ready, not stopping, nothing in flight,
        waiting or queued for it)."""
        if inst.stopping or inst.download:
            return None
        model = self.models[inst.model]
        ttl = self.config.ttl_of(model.spec)
        if not ttl or model.instance is not inst or model.busy \
                or model.status not in (Status.LOADED, Status.SLEEPING) \
                or inst.model in self.scheduler.queue:
            return None
        return model.last_used + ttl

    def handle(self, event: Event, now: float) -> list[Command]:
        out: list[Command] = []
        if isinstance(event, RequestArrived):
            self._on_request(event, now, out)
        elif isinstance(event, ResponseEnded):
            self._release(event.req, now, out)
        elif isinstance(event, ClientGone):
            self._on_client_gone(event.req, now, out)
        elif isinstance(event, ChildOutput):
            self._on_output(event.instance, event.data, now, out)
        elif isinstance(event, ChildStarted):
            started = self.instances.get(event.instance)
            if started is not None:  # None: it was killed and reaped before it was seen
                started.address = event.address
        elif isinstance(event, ChildExited):
            self._on_exit(event.instance, event.code, now, out)
        elif isinstance(event, TimerFired):
            self._on_timer(now, out)
        elif isinstance(event, ListAsked):
            out.append(Listed(event.req, tuple(self._view(m) for m in self.models.values()
                                               if not m.vanished)))
        elif isinstance(event, LoadAsked):
            self._on_load_asked(event, now, out)
        elif isinstance(event, UnloadAsked):
            self._on_unload_asked(event, now, out)
        elif isinstance(event, DownloadAsked):
            self._on_download_asked(event, out)
        elif isinstance(event, RemoveAsked):
            self._on_remove_asked(event, now, out)
        elif isinstance(event, CatalogChanged):
            self._on_catalog(event, now, out)
        elif isinstance(event, RouterStarted):
            for model in self.models.values():
                if model.spec.load_on_startup and model.status is Status.UNLOADED:
                    self.scheduler.enqueue(model.spec.name, None)
            self.scheduler.run(now, out)
        else:  # pragma: no cover - the Event union is closed
            raise TypeError(f"not an event: {event!r}")
        return out

    # -- requests ----------------------------------------------------------------------------

    def _on_request(self, event: RequestArrived, now: float, out: list[Command]) -> None:
        req = event.req
        if event.model is None or event.model == "":
            out.append(Reply(req, 400, errors.INVALID_REQUEST, "the request names no model"))
            return
        name = self.resolve(event.model)
        if name is None:
            out.append(Reply(req, 400, errors.MODEL_NOT_FOUND,
                             f"model {event.model!r} not found"))
            return
        model = self.models[name]
        inst = model.instance
        autoload = self.config.autoload if event.autoload is None else event.autoload
        if model.downloading:
            if not autoload:
                out.append(Reply(req, 400, errors.MODEL_NOT_LOADED,
                                 f"model {name!r} is not loaded (still downloading)"))
                return
            if not self._room(req, out):
                return
            self.requests[req] = Request(name, Phase.DOWNLOAD)
            model.after_download.append(req)
            return
        # (a model with requests queued for it, from while it drained, keeps the new ones
        # behind them: they join that entry)
        if inst is not None and not inst.stopping and name not in self.scheduler.draining \
                and name not in self.scheduler.queue:
            if model.status is Status.LOADING:
                if not self._room(req, out):
                    return
                self.requests[req] = Request(name, Phase.WAITING, self.scheduler.next_seq(),
                                             autoload)
                model.waiters.append(req)
            else:
                if (model.in_line or model.full) and not self._room(req, out):
                    return
                # (its place in arrival order: should it wait in line and its model's child
                # die, it goes back to the queue at that place)
                self.requests[req] = Request(name, Phase.FORWARDED, self.scheduler.next_seq(),
                                             autoload)
                self.send(req, model, now, out)
            return
        if not autoload and (inst is None or inst.stopping):
            out.append(Reply(req, 400, errors.MODEL_NOT_LOADED,
                             f"model {name!r} is not loaded"))
            return
        pinned = self.scheduler.pinned_out(model)
        if pinned:
            out.append(Reply(req, 503, errors.PINNED_OUT, self.scheduler.pinned_message(
                model, pinned)))
            return
        if not self._room(req, out):
            return
        # Queued, also with autoload off for a draining model: it waits behind the drain like
        # any other request (or that model would never drain), and is refused if the model is
        # stopped before its turn (``_refuse_held``).
        self.requests[req] = Request(name, Phase.QUEUED, self.scheduler.next_seq(), autoload)
        self.scheduler.enqueue(name, req)
        self.scheduler.run(now, out)

    def _room(self, req: int, out: list[Command]) -> bool:
        """Whether request ``req`` may wait (``--queue-max``): if as many requests wait already,
        it is answered 429 with Retry-After, and no waiting request is dropped for it."""
        limit = self.config.queue_max
        if not limit:
            return True
        waiting = sum(1 for r in self.requests.values() if r.phase is not Phase.FORWARDED)
        if waiting < limit:
            return True
        out.append(Reply(req, 429, errors.QUEUE_FULL, f"{waiting} requests are waiting "
                         f"already (--queue-max {limit}); try again later", retry_after=1))
        return False

    def send(self, req: int, model: Model, now: float, out: list[Command]) -> None:
        """Send ``req`` to its model's ready child, or put it in line on the model while as
        many requests as its ``concurrency`` allows are in flight there (arrival order)."""
        if model.in_line or model.full:
            self.requests[req].phase = Phase.IN_LINE
            model.in_line.append(req)
        else:
            self.forward(req, model, now, out)

    def _next_in_line(self, model: Model, now: float, out: list[Command]) -> None:
        """A place is free on the model's child: the requests in line go, oldest first."""
        while model.in_line and model.usable and not model.full:
            self.forward(model.in_line.pop(0), model, now, out)

    def _out_of_line(self, model: Model, out: list[Command]) -> None:
        """The model's child stops or died: its requests in line go back to the queue at their
        places in arrival order, or get the error any request for it would get now."""
        lined, model.in_line = model.in_line, []
        name = model.spec.name
        for req in lined:
            if model.removing or model.vanished:
                self.fail_waiters([req], 404, errors.REMOVED,
                                  f"model {name!r} was removed", out)
            elif not self.requests[req].autoload:
                self.fail_waiters([req], 400, errors.MODEL_NOT_LOADED,
                                  f"model {name!r} is not loaded", out)
            else:
                self.requests[req] = Request(name, Phase.QUEUED, self.requests[req].seq)
                self.scheduler.enqueue(name, req)

    def forward(self, req: int, model: Model, now: float, out: list[Command]) -> None:
        assert model.instance is not None
        self.requests[req] = Request(model.spec.name, Phase.FORWARDED)
        model.forwarded.add(req)
        model.last_used = now
        out.append(Forward(req, model.spec.name, model.instance.id, model.instance.address))

    def _release(self, req: int, now: float, out: list[Command]) -> None:
        """The response of ``req`` ended: drop its reference, then see what the queue needs."""
        request = self.requests.pop(req, None)
        if request is None:
            return
        model = self.models.get(request.model)
        if model is not None:  # None: removed while this response was still on its way
            model.forwarded.discard(req)
            self._next_in_line(model, now, out)
            model.last_used = now
        self.scheduler.run(now, out)

    def _on_client_gone(self, req: int, now: float, out: list[Command]) -> None:
        request = self.requests.get(req)
        if request is None:
            return
        if request.phase is Phase.DOWNLOAD:
            del self.requests[req]
            self.models[request.model].after_download.remove(req)
            return
        if request.phase is Phase.QUEUED:
            del self.requests[req]
            self.scheduler.dequeue(request.model, req)
        elif request.phase is Phase.WAITING:
            del self.requests[req]
            self.models[request.model].waiters.remove(req)
        elif request.phase is Phase.IN_LINE:
            del self.requests[req]
            self.models[request.model].in_line.remove(req)
        else:
            self._release(req, now, out)
            return
        self.scheduler.run(now, out)

    def join(self, model: Model, reqs: list[int], now: float, out: list[Command]) -> None:
        """Queued requests join the model's child: wait for its load, or go to it now, in
        arrival order (an entry's requests are not: a line sent back to the queue joins the
        entry after the requests queued there since)."""
        for req in sorted(reqs, key=lambda r: self.requests[r].seq):
            if model.status is Status.LOADING:
                self.requests[req].phase = Phase.WAITING
                model.waiters.append(req)
            else:
                self.send(req, model, now, out)

    def fail_waiters(self, reqs: list[int], status: int, kind: str, message: str,
                     out: list[Command]) -> None:
        for req in reqs:
            self.requests.pop(req, None)
            out.append(Reply(req, status, kind, message))

    # -- the HTTP API ------------------------------------------------------------------------

    def _on_load_asked(self, event: LoadAsked, now: float, out: list[Command]) -> None:
        name = self.resolve(event.model)
        if name is None:
            out.append(Reply(event.req, 404, errors.MODEL_NOT_FOUND,
                             f"model {event.model!r} not found"))
            return
        model = self.models[name]
        if model.downloading:  # it loads as soon as its download is done
            model.load_after_download = True
            out.append(Reply(event.req, 200, errors.OK))
            return
        if model.usable:
            out.append(Reply(event.req, 400, errors.ALREADY_RUNNING,
                             f"model {name!r} is already running"))
            return
        if not self.scheduler.fits_alone(model):
            out.append(Reply(event.req, 507, errors.INSUFFICIENT_MEMORY,
                             f"model {name!r} needs more memory than a device has"))
            return
        pinned = self.scheduler.pinned_out(model)
        if pinned:
            out.append(Reply(event.req, 503, errors.PINNED_OUT,
                             self.scheduler.pinned_message(model, pinned)))
            return
        self.scheduler.enqueue(name, None)
        out.append(Reply(event.req, 200, errors.OK))
        self.scheduler.run(now, out)

    def _on_unload_asked(self, event: UnloadAsked, now: float, out: list[Command]) -> None:
        name = self.resolve(event.model)
        model = self.models.get(name) if name is not None else None
        if model is None or model.instance is None:
            out.append(Reply(event.req, 400, errors.NOT_RUNNING,
                             f"model {event.model!r} is not running"))
            return
        if model.instance.download:  # cancel the download; answered once its child is gone
            model.load_after_download = False  # and the load asked for after it
            model.instance.exit_replies.append(event.req)
            self.stop(model, now, out)
            return
        self.stop(model, now, out)
        out.append(Reply(event.req, 200, errors.OK))

    def _on_download_asked(self, event: DownloadAsked, out: list[Command]) -> None:
        name = event.model
        if name in self.models or self.resolve(name) is not None:
            out.append(Reply(event.req, 400, errors.ALREADY_EXISTS,
                             f"model {name!r} already exists"))
            return
        self.add_model(ModelSpec(name, card=Card(source="cache")))
        model = self.models[name]
        model.status = Status.DOWNLOADING  # a fresh entry starts here
        out.append(Publish(name, "status_change", {"status": Status.DOWNLOADING.value}))
        inst = Instance(self._next_instance, name, download=True)
        self._next_instance += 1
        self.instances[inst.id] = inst
        model.instance = inst
        out.append(Spawn(inst.id, name, download=True))
        out.append(Reply(event.req, 200, errors.OK))

    def _on_remove_asked(self, event: RemoveAsked, now: float, out: list[Command]) -> None:
        name = self.resolve(event.model)
        model = self.models.get(name) if name is not None else None
        if model is None:
            out.append(Reply(event.req, 404, errors.MODEL_NOT_FOUND,
                             f"model {event.model!r} not found"))
            return
        # From now on the name resolves to nothing: no new request can reach the model.
        for alias in (model.spec.name, *model.spec.aliases):
            if self.names.get(alias) == model.spec.name:
                del self.names[alias]
        why = f"model {model.spec.name!r} was removed"
        entry = self.scheduler.queue.pop(model.spec.name, None)
        if entry is not None:
            self.fail_waiters(entry.waiters, 404, errors.REMOVED, why, out)
        waiting, model.after_download = model.after_download, []
        self.fail_waiters(waiting, 404, errors.REMOVED, why, out)
        model.removing.append(event.req)
        if model.instance is None:
            self._finish_remove(model, out)
        else:
            self.stop(model, now, out)
        self.scheduler.run(now, out)

    def _finish_remove(self, model: Model, out: list[Command]) -> None:
        """Nothing runs for ``model`` any more: delete its files and forget it."""
        name = model.spec.name
        out.append(RemoveFiles(name))
        self._forget(model)
        out.append(Publish(name, "model_remove"))
        for req in model.removing:
            out.append(Reply(req, 200, errors.OK))

    # -- children ----------------------------------------------------------------------------

    def spawn(self, model: Model, out: list[Command]) -> None:
        # It counts with the need its spec says now, whatever a later reload says.
        inst = Instance(self._next_instance, model.spec.name, memory=model.spec.memory)
        self._next_instance += 1
        self.instances[inst.id] = inst
        self._set_status(model, Status.LOADING, out)
        model.instance = inst
        model.exit_code = None
        model.failed = False
        out.append(Spawn(inst.id, model.spec.name, card=model.spec.card))

    def stop(self, model: Model, now: float, out: list[Command], group: str | None = None
             ) -> None:
        """Stop the model's child: kill it at once while LOADING, else ask it to exit.
        ``group``: the model it makes way for, outside whose group it is (said in the trace)."""
        inst = model.instance
        if inst is None or inst.stopping:
            return
        inst.stopping = True
        if model.status is Status.LOADING:  # it may read stdin only once loaded (#21814)
            out.append(Kill(inst.id))
        else:
            out.append(SendExit(inst.id, group=group))
            inst.kill_at = now + model.spec.stop_timeout
        self._refuse_held(model, out)
        self._out_of_line(model, out)

    def _refuse_held(self, model: Model, out: list[Command]) -> None:
        """Requests with autoload off that queued behind the drain of ``model``: it stops, so
        they get what any request with autoload off gets for a model not running."""
        name = model.spec.name
        entry = self.scheduler.queue.get(name)
        held = [r for r in entry.waiters if not self.requests[r].autoload] if entry else []
        for req in held:
            self.scheduler.dequeue(name, req)
        self.fail_waiters(held, 400, errors.MODEL_NOT_LOADED, f"model {name!r} is not loaded "
                          "(it was unloaded while the request waited for its turn)", out)

    def _on_output(self, instance: int, data: bytes, now: float, out: list[Command]) -> None:
        inst = self.instances.get(instance)
        if inst is None:
            return
        for line in inst.reader.feed(data):
            self._on_line(inst, line, now, out)

    def _on_line(self, inst: Instance, line: bytes | Overlong, now: float,
                 out: list[Command]) -> None:
        parsed = parse_line(line)
        model = self.models[inst.model]
        if inst.download and isinstance(parsed, (DownloadProgress, DownloadResult)):
            self._on_download_line(inst, model, parsed, now, out)
        elif inst.download and not isinstance(parsed, (LogLine, Rejection)):
            out.append(Log(inst.id, f"ignored model message from a download child: {parsed!r}"))
        elif isinstance(parsed, LogLine):
            out.append(Log(inst.id, parsed.text))
        elif isinstance(parsed, Rejection):
            out.append(Log(inst.id, f"ignored child message: {parsed.reason}"))
        elif isinstance(parsed, LoadingState):
            if model.status is Status.LOADING:
                # Published as the child said it, never kept: llama-server's router stores it
                # (meta.progress) but GET /models does not show it (server-models.cpp,
                # update_status, get_router_models). A bare "loading" says nothing the spawn
                # did not.
                if parsed.progress is not None:
                    out.append(Publish(model.spec.name, "status_change", {
                        "status": Status.LOADING.value,
                        "progress": progress_payload(parsed.progress)}))
            else:
                out.append(Log(inst.id, f"ignored 'loading' while {model.status.value}"))
        elif isinstance(parsed, ReadyState):
            self._on_ready(inst, model, parsed, now, out)
        elif isinstance(parsed, SleepingState):
            if model.status is Status.LOADED:
                self._set_status(model, Status.SLEEPING, out)
            else:
                out.append(Log(inst.id, f"ignored 'sleeping' while {model.status.value}"))
        else:
            out.append(Log(inst.id, f"ignored download message from a model child: {parsed!r}"))

    def _on_download_line(self, inst: Instance, model: Model,
                          msg: DownloadProgress | DownloadResult, now: float,
                          out: list[Command]) -> None:
        name = model.spec.name
        if model.status is not Status.DOWNLOADING or inst.stopping:
            out.append(Log(inst.id, f"ignored download message while {model.status.value}"))
            return
        if isinstance(msg, DownloadProgress):
            progress = model.info.setdefault("progress", {})
            progress[msg.url] = {"done": msg.downloaded, "total": msg.total}
            out.append(Publish(name, "download_progress",
                               {"progress": {u: dict(p) for u, p in progress.items()}}))
            return
        model.download_result = msg.ok
        if msg.ok:
            self._set_status(model, Status.DOWNLOADED, out)
            out.append(Publish(name, "download_finished"))
        else:
            out.append(Publish(name, "download_failed"))
        self.stop(model, now, out)  # its work is done: ask it to exit

    def _on_download_exit(self, inst: Instance, model: Model, code: int, now: float,
                          out: list[Command]) -> None:
        model.instance = None
        model.info.pop("progress", None)
        for req in inst.exit_replies:
            out.append(Reply(req, 200, errors.OK))
        if model.status is Status.DOWNLOADED and not model.removing:
            # Replaced by a fresh entry: an ordinary cache model, loaded for whoever waited.
            self._set_status(model, Status.UNLOADED, out)
            waiting, model.after_download = model.after_download, []
            if inst.exit_replies:  # an unload came as it ended: it cancels its waiters too
                self.fail_waiters(waiting, 503, errors.DOWNLOAD_FAILED,
                                  f"model {model.spec.name!r} was unloaded as its download "
                                  f"ended", out)
                waiting = []
            for req in waiting:
                self.requests[req] = Request(model.spec.name, Phase.QUEUED,
                                             self.scheduler.next_seq())
                self.scheduler.enqueue(model.spec.name, req)
            if model.load_after_download:  # not read again: a new download is a new entry
                self.scheduler.enqueue(model.spec.name, None)
            self.scheduler.run(now, out)
            return
        # Failed, cancelled or crashed: nothing of it stays, files included.
        if model.download_result is None and model.status is Status.DOWNLOADING:
            out.append(Publish(model.spec.name, "download_failed", {"exit_code": code}))
        if model.status is Status.DOWNLOADING:
            self._set_status(model, Status.UNLOADED, out, exit_code=code)
        waiting, model.after_download = model.after_download, []
        self.fail_waiters(waiting, 503, errors.DOWNLOAD_FAILED,
                          f"the download of model {model.spec.name!r} did not finish", out)
        self._finish_remove(model, out)
        self.scheduler.run(now, out)

    def _on_ready(self, inst: Instance, model: Model, msg: ReadyState, now: float,
                  out: list[Command]) -> None:
        if model.status is Status.LOADED:
            out.append(Log(inst.id, "ignored 'ready' while loaded"))
            return
        first = model.status is Status.LOADING
        if first:
            model.info = dict(msg.info)
        self._set_status(model, Status.LOADED, out, info=model.info if first else None)
        model.last_used = now
        if not first:
            return
        # The waiters keep the model busy until they are forwarded (to this child, or queued
        # again when it is already stopping): only then may the scheduler look at it.
        waiters, model.waiters = model.waiters, []
        for req in waiters:
            self._dispatch_again(req, model, now, out)
        self.scheduler.run(now, out)

    def _dispatch_again(self, req: int, model: Model, now: float, out: list[Command]) -> None:
        """Send ``req`` to its model's child if usable, else back into the queue; for a model
        on its way out (removed, or gone from the sources), it waits for the exit that answers
        it, as nothing will load that model again."""
        if model.usable:
            self.send(req, model, now, out)
        elif model.removing or model.vanished:
            model.waiters.append(req)
        elif not self.requests[req].autoload:  # its child is already stopping
            self.fail_waiters([req], 400, errors.MODEL_NOT_LOADED,
                              f"model {model.spec.name!r} is not loaded", out)
        else:  # at the head of the queue (seq 0), as when its load was started
            self.requests[req] = Request(model.spec.name, Phase.QUEUED)
            self.scheduler.enqueue(model.spec.name, req)

    def _on_exit(self, instance: int, code: int, now: float, out: list[Command]) -> None:
        inst = self.instances.pop(instance, None)
        if inst is None:
            return
        for line in inst.reader.finish():
            parsed = parse_line(line)
            if inst.download or isinstance(parsed, (LogLine, Rejection)):
                self._on_line(inst, line, now, out)
            else:  # a child that has exited is not ready, loading or asleep any more
                out.append(Log(inst.id, f"ignored a message from a child that exited: {parsed!r}"))
        model = self.models[inst.model]
        if model.instance is not inst:  # pragma: no cover - one child per model at a time
            return
        if inst.download:
            self._on_download_exit(inst, model, code, now, out)
            return
        model.instance = None
        model.exit_code = code
        requested = inst.stopping
        self._refuse_held(model, out)  # a child that crashed: not stopped before
        self._out_of_line(model, out)
        model.failed = code != 0 and not requested
        self._set_status(model, Status.UNLOADED, out, exit_code=code, failed=model.failed)
        waiters, model.waiters = model.waiters, []
        if requested:
            why = f"model {model.spec.name!r} was unloaded before it finished loading"
        else:
            why = f"model {model.spec.name!r} failed to load (exit code {code})"
        self.fail_waiters(waiters, 503, errors.LOAD_FAILED, why, out)
        if model.removing:
            self._finish_remove(model, out)
        elif model.vanished:
            self._forget(model)
            out.append(Publish(model.spec.name, "model_remove"))
        # Forwarded requests end through ResponseEnded from the proxy; their refs go with them.
        self.scheduler.run(now, out)

    def _on_timer(self, now: float, out: list[Command]) -> None:
        for inst in self.instances.values():
            if inst.kill_at is not None and inst.kill_at <= now:
                inst.kill_at = None
                out.append(Kill(inst.id))
        expired = [inst for inst in self.instances.values()
                   if (t := self._expiry(inst)) is not None and t <= now]
        for inst in expired:
            self._expire(inst, now, out)
        self.scheduler.on_timer(now, out)

    def _expire(self, inst: Instance, now: float, out: list[Command]) -> None:
        """Unload a model idle for its TTL: its ready child is asked to exit, as ``stop`` asks
        it, and the trace says why (``SendExit.expired``: not an eviction). Nothing is in
        flight, in line or queued for it, so nothing else is to be done."""
        inst.stopping = True
        out.append(SendExit(inst.id, expired=True))
        inst.kill_at = now + self.models[inst.model].spec.stop_timeout

    # -- status ------------------------------------------------------------------------------

    def _set_status(self, model: Model, new: Status, out: list[Command], **extra: Any) -> None:
        check_transition(model.spec.name, model.status, new)
        model.status = new
        data: dict[str, Any] = {"status": new.value}
        data.update((k, v) for k, v in extra.items() if v is not None)
        out.append(Publish(model.spec.name, "status_change", data))
