"""A trace rebuilt from what a client of a live router sees, for the invariant functions.

A black-box test sees its own requests (sent, answered, ended) and the router's ``/models/sse``
events. This module turns those into the trace shape the invariants read: a status ``loading``
after ``unloaded`` stands for a spawn, ``unloaded`` for a stop and an exit (a stop the test did not
ask for, and neither a crash the test caused nor one the router reports as ``failed`` (or, with
no such flag, by a non-zero ``exit_code``), counts as an eviction), a 2xx answer for a forward,
``load`` for a load the client asked for (answered 200) and ``gone`` for a client that left.
Only the guarantees that such a view can judge are checked (:data:`OBSERVABLE`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from refimpl.core.commands import Forward, Publish, Reply, SendExit, Spawn
from refimpl.core.config import RouterConfig
from refimpl.core.events import (
    ChildExited,
    ClientGone,
    LoadAsked,
    RequestArrived,
    ResponseEnded,
    UnloadAsked,
)
from refimpl.core.trace import At, Item

from .invariants import CHECKS, Violation

OBSERVABLE = ("limits_held", "legal_transitions", "answered_once", "every_request_answered",
              "busy_never_evicted", "no_thrash", "coalesced")


def unload_failed(data: dict[str, Any], asked: bool = False) -> bool:
    """Whether an ``unloaded`` event's payload says the child failed (died on its own: a crash,
    not a stop): its ``failed`` flag, or, from a router whose events carry only the exit code
    (llama-server; ``GET /models`` derives "failed" from it), a non-zero code for a stop nobody
    ``asked`` for."""
    return bool(data.get("failed", not asked and data.get("exit_code", 0) != 0))


@dataclass
class Observed:
    """Append-only log of what a client saw, with times in seconds from a common start."""

    entries: list[tuple[float, int, str, dict[str, Any]]] = field(default_factory=list)
    _seq: int = 0

    def add(self, t: float, kind: str, **data: Any) -> None:
        self._seq += 1
        self.entries.append((t, self._seq, kind, data))

    def in_causal_order(self) -> list[tuple[float, int, str, dict[str, Any]]]:
        """The entries by time, except that a successful answer or end noted after its model's
        ``unloaded`` event, with no new ``loading`` in between, goes just before that event.

        The times come from different threads of the client (the request's, the SSE reader's),
        so a response that ended before its child exited can be noted after the exit's event (a
        fast router evicts an idle model milliseconds after the response's last byte). Such an
        answer can only have come from the child that just exited, so it happened before the
        exit. Errors and cut streams keep their place."""
        out: list[tuple[float, int, str, dict[str, Any]]] = []
        model_of: dict[int, str] = {}
        exited_at: dict[str, int] = {}  # model -> index in out of its latest "unloaded"
        for entry in sorted(self.entries):
            t, _, kind, d = entry
            if kind == "send":
                model_of[d["req"]] = d["model"]
            model: str = (d["model"] if kind in ("answer", "sse")
                          else model_of.get(d.get("req", -1), ""))
            status = d["data"].get("status") if kind == "sse" else None
            ok = (kind == "answer" and d["status"] < 400) or (kind == "end" and d["ok"])
            if ok and model in exited_at:
                at = exited_at[model]
                out.insert(at, (out[at][0], out[at][1], kind, d))
                exited_at = {m: i + 1 if i >= at else i for m, i in exited_at.items()}
                continue
            if status == "unloaded":
                exited_at[model] = len(out)
            elif status == "loading":
                exited_at.pop(model, None)
            out.append(entry)
        return out

    def trace(self) -> list[At]:
        out: list[At] = []
        instance: dict[str, int] = {}  # model -> its current synthetic child
        running: set[str] = set()
        next_instance = 1
        calls = 0
        unloading: set[str] = set()
        crashed: set[str] = set()
        # A load asked while the test's unload of the model is under way is for the next child:
        # the trace shows the unload's cause only at the exit, so the load waits for it there.
        after_exit: dict[str, list[Item]] = {}
        for t, _, kind, d in self.in_causal_order():
            items: list[Item] = []
            if kind == "send":
                items.append(RequestArrived(d["req"], d["model"]))
            elif kind == "answer":
                if d["status"] < 400:
                    items.append(Forward(d["req"], d["model"], instance.get(d["model"], 0)))
                elif d["model"] in running:
                    # Its model runs: the child failed it (a router refuses a request for a
                    # running model of its own accord only in ways these checks do not judge).
                    # Its "loaded" event may be noted after the answer (another thread), so
                    # "running", not "loaded", decides.
                    items += [Forward(d["req"], d["model"], instance[d["model"]]),
                              ResponseEnded(d["req"], ok=False)]
                else:
                    items.append(Reply(d["req"], d["status"], "http", d.get("message", "error")))
            elif kind == "end":
                items.append(ResponseEnded(d["req"], d["ok"]))
            elif kind == "unload":
                unloading.add(d["model"])
            elif kind == "load":  # a load the test asked for, answered 200 (noted when asked)
                calls -= 1
                asked: list[Item] = [LoadAsked(calls, d["model"]), Reply(calls, 200, "ok")]
                if d["model"] in unloading and d["model"] in running:
                    after_exit.setdefault(d["model"], []).extend(asked)
                else:
                    items += asked
            elif kind == "gone":  # the test's client left before its answer ended
                items.append(ClientGone(d["req"]))
            elif kind == "crash":
                crashed.add(d["model"])
            elif kind == "sse":
                model, data = d["model"], d["data"]
                status = data.get("status")
                if status == "loading" and model not in running:
                    running.add(model)
                    instance[model] = next_instance
                    items.append(Spawn(next_instance, model))
                    next_instance += 1
                elif status == "unloaded" and model in running:
                    running.discard(model)
                    inst = instance[model]
                    failed = unload_failed(data, asked=model in unloading)
                    if model not in crashed and not failed:
                        if model in unloading:  # the test's unload, answered: the stop's cause
                            calls -= 1  # an id no request of the test has
                            call = calls
                            items += [UnloadAsked(call, model), Reply(call, 200, "ok")]
                        items.append(SendExit(inst))
                    items.append(ChildExited(inst, data.get("exit_code", 0)))
                    items += after_exit.pop(model, [])
                    unloading.discard(model)
                    crashed.discard(model)
                if status is not None:
                    items.append(Publish(model, "status_change", dict(data)))
            out.extend(At(t, item) for item in items)
        return out


def check_observed(observed: Observed, config: RouterConfig) -> list[Violation]:
    trace = observed.trace()
    out: list[Violation] = []
    for name in OBSERVABLE:
        out.extend(CHECKS[name](trace, config))
    return out
