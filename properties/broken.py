"""A hand-made trace that breaks each guarantee of ``invariants.py``: what a buggy router would
record. ``properties/test_invariants.py`` checks that each one fails its guarantee;
``python -m properties.broken`` prints the table of promises and the violation each trace gives
(``--write docs/INVARIANTS.md`` records it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refimpl.core import errors
from refimpl.core.commands import Forward, Listed, ModelView, Publish, Reply, SendExit, Spawn
from refimpl.core.config import Group, ModelSpec, RouterConfig
from refimpl.core.events import (ChildExited, DownloadAsked, ListAsked, LoadAsked, RequestArrived,
                                 ResponseEnded, TimerFired, UnloadAsked)
from refimpl.core.trace import At

from .invariants import CHECKS

GiB = 1024**3
ONE = RouterConfig(models=(ModelSpec("A", stop_timeout=5.0), ModelSpec("B", stop_timeout=5.0),
                           ModelSpec("C", stop_timeout=5.0)), models_max=1)
MEM = RouterConfig(models=(ModelSpec("A", memory={"gpu": 6 * GiB}, stop_timeout=5.0),
                           ModelSpec("B", memory={"gpu": 6 * GiB}, stop_timeout=5.0)),
                   models_max=0, devices={"gpu": 10 * GiB})

# ROUTER.md section 7: a pinned model, a model with an idle TTL and a concurrency of one
PIN = RouterConfig(models=(ModelSpec("P", pin=True, stop_timeout=5.0),
                           ModelSpec("B", stop_timeout=5.0)), models_max=1)
TTL = RouterConfig(models=(ModelSpec("A", ttl=10.0, stop_timeout=5.0),), models_max=1)
LINE = RouterConfig(models=(ModelSpec("A", concurrency=1, stop_timeout=5.0),), models_max=1)
QUEUE = RouterConfig(models=ONE.models, models_max=1, queue_max=2)
# ROUTER.md section 7's groups: A in group chat, B in its own (no count limit)
GROUPS = RouterConfig(models=(ModelSpec("A", group=Group("chat"), stop_timeout=5.0),
                              ModelSpec("B", stop_timeout=5.0)), models_max=0)

LOADED = {"status": "loaded", "info": {}}


def loaded(model: str) -> Publish:
    return Publish(model, "status_change", LOADED)


def unloaded(model: str, code: int = 0) -> Publish:
    return Publish(model, "status_change", {"status": "unloaded", "exit_code": code})


def serve_a(t: float = 0.0, req: int = 1, inst: int = 1) -> list[At]:
    """A request for A loads A and is served."""
    return [At(t, RequestArrived(req, "A")), At(t, Publish("A", "status_change",
                                                           {"status": "loading"})),
            At(t, Spawn(inst, "A")), At(t + 1, loaded("A")), At(t + 1, Forward(req, "A", inst)),
            At(t + 2, ResponseEnded(req))]


def evict(inst: int, model: str, t: float) -> list[At]:
    return [At(t, SendExit(inst)), At(t + 0.1, ChildExited(inst, 0)),
            At(t + 0.1, unloaded(model))]


# Each guarantee: (config, a trace that breaks it). The trace is what a buggy router would record.
BROKEN: dict[str, tuple[RouterConfig, list[At]]] = {
    "limits_held": (ONE, [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")),
                          At(0, RequestArrived(2, "B")), At(0, Spawn(2, "B"))]),
    "busy_never_evicted": (ONE, [*serve_a()[:5], At(1.5, RequestArrived(2, "B")),
                                 At(1.5, SendExit(1))]),
    "victim_is_lru": (RouterConfig(models=ONE.models, models_max=2), [
        *serve_a(0, 1, 1), At(3, RequestArrived(2, "B")), At(3, Spawn(2, "B")),
        At(4, loaded("B")), At(4, Forward(2, "B", 2)), At(5, ResponseEnded(2)),
        At(6, RequestArrived(3, "C")), At(6, SendExit(2))]),  # B is newer than A
    "evictions_needed": (ONE, [*serve_a(), At(5, TimerFired()), At(5, SendExit(1))]),
    "loads_bounded": (ONE, [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")),
                            At(0.1, RequestArrived(2, "B")), At(1, loaded("A")),
                            At(1, SendExit(1)), At(1.1, ChildExited(1, 0)),
                            At(1.1, Spawn(2, "B")), At(2, loaded("B")),
                            At(2, Forward(2, "B", 2)), At(3, ResponseEnded(2)),
                            At(3, SendExit(2)), At(3.1, ChildExited(2, 0)),
                            At(3.1, Spawn(3, "A"))]),  # A again for request 1, older than 2
    "legal_transitions": (ONE, [At(0, Publish("A", "status_change", {"status": "loaded"}))]),
    "answered_once": (ONE, [At(0, RequestArrived(1, "A")), At(0, Reply(1, 400, "x", "no")),
                            At(0, Reply(1, 400, "x", "again"))]),
    "every_request_answered": (ONE, [At(0, LoadAsked(1, "A"))]),  # never answered
    "bounded_wait": (ONE, [*serve_a(), At(3, RequestArrived(2, "B")),
                           At(500, Reply(2, 503, errors.LOAD_FAILED, "late"))]),
    "errors_have_causes": (ONE, [At(0, RequestArrived(1, "A")),
                                 At(0, Reply(1, 503, errors.LOAD_FAILED, "busy, try later"))]),
    "api_calls_take_effect": (ONE, [*serve_a(), At(3, UnloadAsked(2, "A")),
                                    At(3, Reply(2, 200, errors.OK)),
                                    At(4, RequestArrived(3, "C"))]),  # A was never stopped
    "exit_reaches_unloaded": (ONE, [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")),
                                    At(0.5, ChildExited(1, 137)),
                                    At(1, RequestArrived(2, "B"))]),
    "coalesced": (ONE, [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")),
                        At(0, Spawn(2, "A"))]),
    "no_thrash": (ONE, [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")),
                        At(0.1, RequestArrived(2, "B")), At(1, loaded("A")),
                        At(1, Reply(1, 503, errors.LOAD_FAILED, "dropped")),
                        At(1, SendExit(1))]),
    "fifo_between_models": (RouterConfig(models=ONE.models, models_max=1), [
        *serve_a(), At(3, RequestArrived(2, "B")), At(3.5, RequestArrived(3, "C")),
        *evict(1, "A", 4), At(4.1, Spawn(2, "C"))]),
    "never_forward_to_stopping": (ONE, [*serve_a()[:5], At(1.5, RequestArrived(2, "B")),
                                        At(1.6, ResponseEnded(1)), At(1.6, SendExit(1)),
                                        At(1.7, RequestArrived(3, "A")),
                                        At(1.7, Forward(3, "A", 1))]),
    "loading_stops": (ONE, [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")),
                            At(0.5, UnloadAsked(2, "A")), At(0.5, SendExit(1))]),
    "stop_not_failed": (ONE, [*serve_a(), At(3, UnloadAsked(2, "A")), At(3, SendExit(1)),
                              At(3, Reply(2, 200, errors.OK)), At(4, ChildExited(1, 1)),
                              At(4, Publish("A", "status_change", {
                                  "status": "unloaded", "exit_code": 1, "failed": True}))]),
    "download_takes_no_slot": (ONE, [*serve_a(), At(3, DownloadAsked(2, "u/D:F16")),
                                     At(3, SendExit(1))]),
    "download_ends_clean": (ONE, [At(0, DownloadAsked(1, "u/D:F16")),
                                  At(0, Spawn(1, "u/D:F16", download=True)),
                                  At(0, Reply(1, 200, errors.OK)),
                                  At(1, ChildExited(1, 1))]),
    "events_well_formed": (ONE, [At(0, DownloadAsked(1, "u/D:F16")),
                                 At(0, Spawn(1, "u/D:F16", download=True)),
                                 At(1, Publish("u/D:F16", "download_failed", {})),
                                 At(1, Publish("u/D:F16", "download_failed", {}))]),
    "listing_true": (ONE, [*serve_a(), At(3, ListAsked(2)), At(3, Listed(2, (
        ModelView("A", (), "unloaded"), ModelView("B", (), "unloaded"),
        ModelView("C", (), "unloaded"))))]),
    "pinned_never_evicted": (PIN, [At(0, RequestArrived(1, "P")), At(0, Spawn(1, "P")),
                                   At(1, loaded("P")), At(1, Forward(1, "P", 1)),
                                   At(2, ResponseEnded(1)), At(3, RequestArrived(2, "B")),
                                   At(3, SendExit(1))]),  # P evicted for B
    "ttl_unloads_idle": (TTL, [*serve_a()[:5], At(11, TimerFired()),
                               At(11, SendExit(1, expired=True))]),  # request 1 in flight
    "concurrency_held": (LINE, [At(0, RequestArrived(1, "A")), At(0, RequestArrived(2, "A")),
                                At(0, Spawn(1, "A")), At(1, loaded("A")),
                                At(1, Forward(1, "A", 1)), At(1, Forward(2, "A", 1))]),
    "queue_limit_held": (QUEUE, [At(0, RequestArrived(1, "A")), At(0, Spawn(1, "A")),
                                 At(0.5, RequestArrived(2, "B")),
                                 At(0.5, Reply(2, 429, errors.QUEUE_FULL, "full",
                                               retry_after=1))]),  # one waits, two may
    "groups_held": (GROUPS, [*serve_a(), At(3, RequestArrived(2, "B")),
                             At(3, Spawn(2, "B"))]),  # A (chat) still runs in B's way
}


def promise(name: str) -> str:
    """The first sentence of the guarantee's docstring."""
    doc = " ".join((CHECKS_DOC[name] or "").split())
    return doc.split(". ")[0].rstrip(".") + "."


CHECKS_DOC = {name: getattr(check, "__doc__", "") for name, check in CHECKS.items()}


def table() -> str:
    rows = ["| guarantee | the promise | what the breaking trace gives |", "|---|---|---|"]
    for name in CHECKS:
        config, trace = BROKEN[name]
        found = CHECKS[name](trace, config)
        shown = str(found[0]).replace("|", "\\|") if found else "NOT BROKEN"
        rows.append(f"| `{name}` | {promise(name)} | {shown} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m properties.broken",
                                     description="Print each guarantee, its promise, and the "
                                                 "violation its hand-made breaking trace gives.")
    parser.add_argument("--write", metavar="FILE", help="write the table into FILE (markdown)")
    args = parser.parse_args(argv)
    text = table()
    print(text)
    if args.write:
        Path(args.write).write_text(
            "# The guarantees, and a trace that breaks each\n\n"
            "Command: `python -m properties.broken --write docs/INVARIANTS.md`. Each guarantee is "
            "a function of `properties/invariants.py` over a trace; the traces are in "
            "`properties/broken.py` and `properties/test_invariants.py` checks each one fails.\n\n"
            + text + "\n")
    return 0 if "NOT BROKEN" not in text else 1


if __name__ == "__main__":
    sys.exit(main())
