"""The router's guarantees (ROUTER.md section 6, BUGZOO.md), each a plain function over a trace.

Every function takes a trace (a sequence of ``At``) and returns the list of its violations, empty
when the guarantee held. They read nothing but the trace, so the simulator sweeps, the stateful
tests and the live conformance runs call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from refimpl.core import errors
from refimpl.core.commands import Forward, Kill, Publish, RemoveFiles, Reply, SendExit, Spawn
from refimpl.core.config import RouterConfig
from refimpl.core.events import (EVENT_TYPES, ChildExited, ClientGone, DownloadAsked, LoadAsked,
                                 RequestArrived, ResponseEnded, RouterStarted)
from refimpl.core.lifecycle import Status, is_legal
from refimpl.core.trace import At

from .replay import Replay


@dataclass(frozen=True, slots=True)
class Violation:
    guarantee: str
    t: float
    detail: str

    def __str__(self) -> str:
        return f"[{self.guarantee}] at t={self.t:.6g}: {self.detail}"


Trace = Sequence[At]


def _aliases(config: RouterConfig) -> dict[str, str]:
    return {alias: spec.name for spec in config.models for alias in spec.aliases}


def limits_held(trace: Trace, config: RouterConfig) -> list[Violation]:
    """At no instant do more children run than models_max, or need more memory than a device has;
    a child asked to stop counts until it has exited (Z3, Z4, Z17). Download children take no
    slot."""
    out: list[Violation] = []
    needs = {spec.name: spec.memory for spec in config.models}
    alive: dict[int, str] = {}
    for at in trace:
        what = at.what
        if isinstance(what, Spawn) and not what.download:
            alive[what.instance] = what.model
            if config.models_max and len(alive) > config.models_max:
                out.append(Violation("limits_held", at.t, f"{len(alive)} children alive, "
                                     f"models_max is {config.models_max}: {sorted(alive.values())}"))
            for device, capacity in config.devices.items():
                used = sum(needs.get(m, {}).get(device, 0) for m in alive.values())
                if used > capacity:
                    out.append(Violation("limits_held", at.t, f"device {device}: {used} bytes "
                                         f"needed by {sorted(alive.values())}, {capacity} available"))
        elif isinstance(what, ChildExited):
            alive.pop(what.instance, None)
    return out


def busy_never_evicted(trace: Trace) -> list[Violation]:
    """The router never evicts a child with in-flight requests, however long the wait (Z2, Z19)."""
    out: list[Violation] = []
    replay = Replay()
    for at in trace:
        what = at.what
        child = replay.first_stop(what)
        if child is not None and replay.stop_reason() == "evicted":
            busy = replay.in_flight(child.instance)
            if busy:
                out.append(Violation("busy_never_evicted", at.t,
                                     f"evicted {child.model} (instance {child.instance}) with "
                                     f"requests {[r.req for r in busy]} in flight"))
        replay.step(at)
    return out


def legal_transitions(trace: Trace) -> list[Violation]:
    """Every published status change is in the lifecycle table. A model the trace has not seen
    (or saw removed) starts UNLOADED, or DOWNLOADING when it is a fresh download's entry."""
    out: list[Violation] = []
    status: dict[str, Status] = {}
    for at in trace:
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


def answered_once(trace: Trace) -> list[Violation]:
    """Each request is forwarded once or answered once, never both, never after its client left,
    and its response ends at most once."""
    out: list[Violation] = []
    decided: dict[int, str] = {}
    ended: set[int] = set()
    for at in trace:
        what = at.what
        if isinstance(what, (Forward, Reply)):
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


def every_request_answered(trace: Trace) -> list[Violation]:
    """Liveness: by the end of the trace every request was served, got an error or was given up
    by its client (Z5, Z7, Z17). Run it on a trace that continued past the last fault."""
    out: list[Violation] = []
    replay = Replay()
    for at in trace:
        replay.step(at)
    for r in replay.requests.values():
        if not r.ended:
            where = f"forwarded to instance {r.instance}" if r.instance else "never forwarded"
            out.append(Violation("every_request_answered", replay.now,
                                 f"request {r.req} for {r.model} (arrived t={r.arrived:.6g}) has "
                                 f"no answer; {where}"))
    return out


def exit_reaches_unloaded(trace: Trace) -> list[Violation]:
    """A child exit in any state leaves its model UNLOADED with the exit code, at once (Z5)."""
    out: list[Violation] = []
    replay = Replay()
    due: tuple[float, ChildExited, str] | None = None  # an exit whose status change is owed

    def missed(t: float, exited: ChildExited, model: str) -> Violation:
        return Violation("exit_reaches_unloaded", t, f"{model}: child exited with code "
                         f"{exited.code} but the model was not reported unloaded")

    for at in trace:
        what = at.what
        if due is not None:
            t, exited, model = due
            if isinstance(what, Publish) and what.model == model:
                if what.data.get("status") == "unloaded" \
                        and what.data.get("exit_code") == exited.code:
                    due = None
            elif isinstance(what, EVENT_TYPES):  # the exit's own commands are over
                out.append(missed(t, exited, model))
                due = None
        if isinstance(what, ChildExited):
            child = replay.children.get(what.instance)
            if child is not None and not child.download:
                due = (at.t, what, child.model)
        replay.step(at)
    if due is not None:
        out.append(missed(*due))
    return out


def download_takes_no_slot(trace: Trace) -> list[Violation]:
    """Starting a download never stops a model: a download child takes no slot and evicts nothing
    (upstream ``test_router_download_model``)."""
    out: list[Violation] = []
    cause: object = None
    for at in trace:
        what = at.what
        if isinstance(what, EVENT_TYPES):
            cause = what
        elif isinstance(what, (SendExit, Kill)) and isinstance(cause, DownloadAsked):
            out.append(Violation("download_takes_no_slot", at.t, f"the download of "
                                 f"{cause.model} stopped child {what.instance}"))
    return out


def download_ends_clean(trace: Trace) -> list[Violation]:
    """When a download child exits, its model is at once an ordinary UNLOADED model (the download
    finished) or gone, files included (it failed, was cancelled or crashed) (Z15)."""
    out: list[Violation] = []
    replay = Replay()
    finished: set[str] = set()
    due: tuple[float, str, bool] | None = None  # (exit time, model, finished)

    def check(t: float, model: str, ok: bool, seen: list[object]) -> None:
        if ok:
            good = any(isinstance(w, Publish) and w.model == model
                       and w.data.get("status") == "unloaded" for w in seen) or any(
                isinstance(w, Publish) and w.model == model and w.event == "model_remove"
                for w in seen)
            want = "reported unloaded"
        else:
            good = any(isinstance(w, RemoveFiles) and w.model == model for w in seen) and any(
                isinstance(w, Publish) and w.model == model and w.event == "model_remove"
                for w in seen)
            want = "removed with its files"
        if not good:
            out.append(Violation("download_ends_clean", t, f"{model}: download child exited "
                                 f"({'finished' if ok else 'not finished'}) but the model was "
                                 f"not {want}"))

    seen: list[object] = []
    for at in trace:
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
        replay.step(at)
    if due is not None:
        check(due[0], due[1], due[2], seen)
    return out


def coalesced(trace: Trace, config: RouterConfig) -> list[Violation]:
    """Requests for one model share one load: at most one child per model at once, and every load
    answers a demand (a waiting request, a load asked through the API, or load-on-startup)."""
    out: list[Violation] = []
    replay = Replay(_aliases(config))
    asked: set[str] = set()
    for at in trace:
        what = at.what
        if isinstance(what, RouterStarted):
            asked.update(s.name for s in config.models if s.load_on_startup)
        elif isinstance(what, LoadAsked):
            asked.add(replay.model_of(what.model))
        elif isinstance(what, Spawn) and not what.download:
            other = replay.by_model.get(what.model)
            if other is not None:
                out.append(Violation("coalesced", at.t, f"{what.model}: second child "
                                     f"{what.instance} while {other.instance} is alive"))
            if not replay.open_for(what.model) and what.model not in asked:
                out.append(Violation("coalesced", at.t, f"{what.model}: loaded with no request "
                                     "waiting for it and no load asked"))
            asked.discard(what.model)
        replay.step(at)
    return out


def no_thrash(trace: Trace) -> list[Violation]:
    """A model loaded for waiting requests serves one of them before it can be evicted (Z1, Z8).

    Only evictions count: an unload asked through the API or a crash may end a child at any time.
    """
    out: list[Violation] = []
    replay = Replay()
    for at in trace:
        what = at.what
        child = replay.first_stop(what)
        if child is not None and replay.stop_reason() == "evicted":
            unserved = sorted(r for r in child.waiters if not replay.requests[r].ended)
            if unserved:
                out.append(Violation("no_thrash", at.t, f"{child.model} (instance "
                                     f"{child.instance}) evicted before it served the "
                                     f"requests {unserved} it was loaded for"))
        replay.step(at)
    return out


def fifo_between_models(trace: Trace, config: RouterConfig) -> list[Violation]:
    """Arrival order is respected between models: a model is loaded for its queued requests only
    when no other model has an older queue entry. A request is queued when the router neither
    forwards it nor lets it join a load in progress; a model's entry lives while it has queued
    requests (or a load asked for it) and ends when the model is loaded."""
    out: list[Violation] = []
    replay = Replay(_aliases(config))
    entries: dict[str, float] = {}  # model -> when its queue entry was made, in queue order
    asked: set[str] = set()
    known = {spec.name for spec in config.models}
    arrived: RequestArrived | None = None  # its commands are still to come
    load: LoadAsked | None = None  # the API call the current commands answer

    def settle() -> None:
        if arrived is None:
            return
        r = replay.requests[arrived.req]
        child = replay.by_model.get(r.model)
        joined = child is not None and child.stop is None and not child.ready
        if not r.answered and not joined and r.model not in entries:
            entries[r.model] = r.arrived

    for at in trace:
        what = at.what
        if isinstance(what, EVENT_TYPES):
            settle()
            arrived = what if isinstance(what, RequestArrived) else None
            load = None
        if isinstance(what, Spawn) and not what.download:
            head = next(iter(entries), None)
            if head is not None and head != what.model and what.model in entries:
                out.append(Violation("fifo_between_models", at.t, f"loaded {what.model} (queued "
                                     f"t={entries[what.model]:.6g}) before {head} (queued "
                                     f"t={entries[head]:.6g})"))
            entries.pop(what.model, None)
            asked.discard(what.model)
        elif isinstance(what, RouterStarted):
            for name in (s.name for s in config.models if s.load_on_startup):
                asked.add(name)
                entries.setdefault(name, at.t)
        elif isinstance(what, LoadAsked):
            load = what
        elif isinstance(what, Reply) and load is not None and what.req == load.req \
                and what.status == 200:
            name = replay.model_of(load.model)
            if name in known:
                asked.add(name)
                entries.setdefault(name, at.t)
        replay.step(at)
        if isinstance(what, (Forward, Reply, ClientGone)):
            r = replay.requests.get(what.req)
            if r is not None and r.model in entries and r.model not in asked \
                    and not replay.open_for(r.model):
                del entries[r.model]
    return out


def never_forward_to_stopping(trace: Trace) -> list[Violation]:
    """Requests go only to a child that is ready and not stopping (Z9)."""
    out: list[Violation] = []
    replay = Replay()
    for at in trace:
        what = at.what
        if isinstance(what, Forward):
            child = replay.children.get(what.instance)
            if child is None or child.stop is not None or not child.ready:
                state = "gone" if child is None else ("stopping" if child.stop else "loading")
                out.append(Violation("never_forward_to_stopping", at.t,
                                     f"request {what.req} forwarded to {what.model} instance "
                                     f"{what.instance}, which is {state}"))
        replay.step(at)
    return out


def loading_stops(trace: Trace) -> list[Violation]:
    """A LOADING child is never an eviction victim, and when unloaded it is killed at once rather
    than asked to exit (it may not read stdin before loading ends) (Z6, Z8)."""
    out: list[Violation] = []
    replay = Replay()
    for at in trace:
        what = at.what
        child = replay.first_stop(what)
        if child is not None and not child.ready:
            if replay.stop_reason() == "evicted":
                out.append(Violation("loading_stops", at.t, f"{child.model} evicted while "
                                     "loading"))
            elif isinstance(what, SendExit):
                out.append(Violation("loading_stops", at.t, f"{child.model} unloaded while "
                                     "loading with the exit command, not killed at once"))
        replay.step(at)
    return out


def stop_not_failed(trace: Trace) -> list[Violation]:
    """A child the router stopped itself is not reported as failed, whatever its exit code (Z18)."""
    out: list[Violation] = []
    replay = Replay()
    stopped: dict[str, int] = {}  # model -> instance whose exit status is due
    for at in trace:
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
        replay.step(at)
    return out


def errors_are_clear(trace: Trace) -> list[Violation]:
    """Errors name their reason, and lack of capacity is never one: it queues (Z10)."""
    out: list[Violation] = []
    for at in trace:
        what = at.what
        if isinstance(what, Reply) and what.status >= 400:
            if what.kind == errors.LIMIT_REACHED:
                out.append(Violation("errors_are_clear", at.t, f"request {what.req} refused for "
                                     f"lack of capacity ({what.status} {what.message!r})"))
            elif not what.message:
                out.append(Violation("errors_are_clear", at.t,
                                     f"request {what.req}: error {what.status} with no message"))
    return out


Check = Callable[[Trace, RouterConfig], list[Violation]]

CHECKS: dict[str, Check] = {
    "limits_held": limits_held,
    "busy_never_evicted": lambda t, c: busy_never_evicted(t),
    "legal_transitions": lambda t, c: legal_transitions(t),
    "answered_once": lambda t, c: answered_once(t),
    "every_request_answered": lambda t, c: every_request_answered(t),
    "exit_reaches_unloaded": lambda t, c: exit_reaches_unloaded(t),
    "coalesced": coalesced,
    "no_thrash": lambda t, c: no_thrash(t),
    "fifo_between_models": fifo_between_models,
    "never_forward_to_stopping": lambda t, c: never_forward_to_stopping(t),
    "loading_stops": lambda t, c: loading_stops(t),
    "stop_not_failed": lambda t, c: stop_not_failed(t),
    "errors_are_clear": lambda t, c: errors_are_clear(t),
    "download_takes_no_slot": lambda t, c: download_takes_no_slot(t),
    "download_ends_clean": lambda t, c: download_ends_clean(t),
}


def check_all(trace: Trace, config: RouterConfig, *, liveness: bool = True,
              first_only: bool = False) -> list[Violation]:
    """Every guarantee; ``liveness=False`` skips the end-of-trace check for a cut-off trace, and
    ``first_only`` stops at the first guarantee that fails (a shrinker only needs a yes or no)."""
    out: list[Violation] = []
    for name, check in CHECKS.items():
        if name == "every_request_answered" and not liveness:
            continue
        out.extend(check(trace, config))
        if out and first_only:
            break
    return out
