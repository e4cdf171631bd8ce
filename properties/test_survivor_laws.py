"""Laws of the scheduler and the core on paths that the sweeps and state machines seldom build: a
reload that lets requests go or makes room, a queued client that leaves, a model requested again
while its old child stops, groups under every policy, pins beside a model too big for any device.
Each is a scripted scenario against the real core (by hand, or with simulated children) and
names, in its docstring, the code change that breaks it (mutmut survivors of
``python -m properties.mutation``, docs/MUTANTS.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from refimpl.core import errors
from refimpl.core.commands import Command, Forward, Kill, Reply, SendExit, Spawn
from refimpl.core.config import Group, ModelSpec, RouterConfig
from refimpl.core.events import (CatalogChanged, ChildExited, ChildOutput, ClientGone, Event,
                                 RequestArrived, ResponseEnded, RouterStarted, UnloadAsked)
from refimpl.core.protocol import ReadyState, format_message
from refimpl.core.router import RouterCore
from simulator.scenario import Request, play

from .invariants import assert_held

GiB = 1024**3
READY = format_message(ReadyState({}))
CHAT, OTHERS, KEPT = Group("chat"), Group("others"), Group("kept", persistent=True)


def spec(name: str, **extra: Any) -> ModelSpec:
    return ModelSpec(name, stop_timeout=5.0, **extra)


class Driven:
    """A core driven by hand at the times given, every command it gave kept."""

    def __init__(self, config: RouterConfig) -> None:
        self.core = RouterCore(config)
        self.out: list[Command] = []
        self.at(0.0, RouterStarted())

    def at(self, now: float, event: Event) -> list[Command]:
        got = self.core.handle(event, now)
        self.out += got
        return got

    def child(self, model: str) -> int:
        return [c.instance for c in self.out if isinstance(c, Spawn) and c.model == model][-1]

    def serve(self, now: float, req: int, model: str) -> int:
        """A request for ``model`` that starts its child, which is ready 0.1 s later."""
        self.at(now, RequestArrived(req, model))
        inst = self.child(model)
        self.at(now + 0.1, ChildOutput(inst, READY))
        return inst


def stops(commands: list[Command]) -> list[Command]:
    return [c for c in commands if isinstance(c, (SendExit, Kill))]


# -- a reload --------------------------------------------------------------------------------


def test_requests_a_reload_lets_out_of_line_count_as_their_models_use() -> None:
    """A (concurrency 1) serves request 1 with 2 in line; B then serves 3. A reload raises A's
    concurrency to 2: 2 goes to A's child at once, and that is A's last use, later than B's, so
    under naive-lru C evicts B, the least recently used. Breaks when the requests a reload lets
    go are sent without the time (mutmut: ``_on_catalog``'s and ``_next_in_line``'s ``now``
    made None: sorting the victims fails) or without the commands (``out`` made None)."""
    a = spec("A", concurrency=1)
    d = Driven(RouterConfig((a, spec("B"), spec("C")), models_max=2, policy="naive-lru"))
    d.serve(0.1, 1, "A")
    d.at(0.3, RequestArrived(2, "A"))
    b = d.serve(0.4, 3, "B")
    assert [c.req for c in d.out if isinstance(c, Forward)] == [1, 3]
    got = d.at(0.6, CatalogChanged((replace(a, concurrency=2),), (), 9))
    assert [c for c in got if isinstance(c, Forward)] == [Forward(2, "A", d.child("A"))], got
    assert stops(d.at(0.7, RequestArrived(4, "C"))) == [SendExit(b)]


def test_a_reload_that_lets_a_queued_model_fit_evicts_the_idle_model_at_once() -> None:
    """One device of 10: A (4) serves, I (4) idles, B (8) waits, as evicting I is not enough
    while A is busy (fifo). A reload that says B needs 6 lets it fit once I is gone: I is asked
    to exit in that step, its kill due its ``stop_timeout`` later. Breaks when the scheduler
    runs after a reload without the time (mutmut: ``_on_catalog``'s ``scheduler.run(None,
    out)``)."""
    config = RouterConfig((spec("A", memory={"gpu0": 4}), spec("I", memory={"gpu0": 4}),
                           spec("B", memory={"gpu0": 8})), models_max=0, devices={"gpu0": 10})
    d = Driven(config)
    d.serve(0.1, 1, "A")
    i = d.serve(0.3, 2, "I")
    d.at(0.5, ResponseEnded(2))
    assert not stops(d.at(0.6, RequestArrived(3, "B")))
    got = d.at(1.0, CatalogChanged((spec("B", memory={"gpu0": 6}),), (), 9))
    assert stops(got) == [SendExit(i)], got
    assert d.core.next_timer() == 1.0 + 5.0


# -- a queued client that leaves ---------------------------------------------------------------


def test_a_queued_client_that_leaves_gives_its_turn_to_the_entry_behind_at_once() -> None:
    """One device of 10: A (4) serves, I (4) idles; B (8) waits (A is busy), and C (4), which
    would fit once I is gone, waits behind it. B's client leaves: C's turn has come, and I is
    asked to exit in that step, its kill due its ``stop_timeout`` later (ROUTER.md 6: a client
    that disconnects while queued costs nobody their slot). Breaks when the scheduler runs
    after a queued client leaves without the time (mutmut: ``_on_client_gone``'s
    ``scheduler.run(None, out)``)."""
    config = RouterConfig((spec("A", memory={"gpu0": 4}), spec("I", memory={"gpu0": 4}),
                           spec("B", memory={"gpu0": 8}), spec("C", memory={"gpu0": 4})),
                          models_max=0, devices={"gpu0": 10})
    d = Driven(config)
    d.serve(0.1, 1, "A")
    i = d.serve(0.3, 2, "I")
    d.at(0.5, ResponseEnded(2))
    assert not stops(d.at(0.6, RequestArrived(3, "B")))
    assert not stops(d.at(0.7, RequestArrived(4, "C")))
    got = d.at(1.0, ClientGone(3))
    assert stops(got) == [SendExit(i)], got
    assert d.core.next_timer() == 1.0 + 5.0


# -- groups ------------------------------------------------------------------------------------


def test_a_model_requested_while_its_old_child_stops_makes_way_meanwhile() -> None:
    """A (persistent group) and X (no group: its own) run together, X idle; A is unloaded and
    requested again before its child has exited. The request waits for that exit, and
    meanwhile X, which is in A's way, is asked to exit for A, its kill due its
    ``stop_timeout`` later. Breaks when the head of the queue whose old child still stops does
    not make way as any other head does (mutmut: ``_spawn_heads``' ``_make_way(...)`` given
    None for the model, the time or the commands)."""
    d = Driven(RouterConfig((spec("A", group=KEPT), spec("X")), models_max=0))
    a = d.serve(0.1, 1, "A")
    d.at(0.3, ResponseEnded(1))
    x = d.serve(0.4, 2, "X")
    d.at(0.6, ResponseEnded(2))
    assert stops(d.at(0.7, UnloadAsked(3, "A"))) == [SendExit(a)]
    got = d.at(1.0, RequestArrived(4, "A"))
    assert stops(got) == [SendExit(x, group="A")], got
    assert d.core.next_timer() == 0.7 + 5.0  # A's kill first; X's is due at 6.0
    d.at(1.1, ChildExited(a, 0))
    assert d.core.next_timer() == 1.0 + 5.0


def test_every_model_in_the_way_is_asked_to_exit_at_once() -> None:
    """x and y (group others) run idle; x is unloaded and ignores it. a (group chat) is
    requested: both are in its way, and y is asked to exit at once, not after x has gone;
    a starts once both have exited. Breaks when the models in the way are stopped only up to
    the first one already stopping (mutmut: ``_make_way``'s ``continue`` made ``break``)."""
    d = Driven(RouterConfig((spec("x", group=OTHERS), spec("y", group=OTHERS),
                             spec("a", group=CHAT)), models_max=0))
    x = d.serve(0.1, 1, "x")
    y = d.serve(0.3, 2, "y")
    d.at(0.5, ResponseEnded(1))
    d.at(0.5, ResponseEnded(2))
    assert stops(d.at(0.6, UnloadAsked(3, "x"))) == [SendExit(x)]
    got = d.at(1.0, RequestArrived(4, "a"))
    assert stops(got) == [SendExit(y, group="a")], got
    assert not [c for c in d.at(1.1, ChildExited(y, 0)) if isinstance(c, Spawn)]
    assert [c.model for c in d.at(5.6, ChildExited(x, 0)) if isinstance(c, Spawn)] == ["a"]


@pytest.mark.parametrize("policy", ["fifo", "naive-lru", "drain-timeout"])
def test_a_busy_model_in_the_way_drains_under_every_policy(policy: str) -> None:
    """a (group chat) streams; b (its own group) waits for it to drain. A request for a that
    comes meanwhile queues behind b under every policy (ROUTER.md 7: busy ones drain, never
    evicted busy), not only under fifo, whose plan drains it too. Breaks when the models in the
    way are not marked draining by ``_make_way`` (mutmut: ``making_way.add(None)``, or ``is not
    Status.LOADING`` made ``is``)."""
    config = RouterConfig((spec("a", group=CHAT), spec("b")), models_max=4, policy=policy)
    trace = play(config, [(0.0, Request("a", 5.0)), (2.0, Request("b")),
                          (3.0, Request("a", 5.0))])
    order = [(at.what.req, at.what.model) for at in trace if isinstance(at.what, Forward)]
    assert order == [(1, "a"), (2, "b"), (3, "a")], order
    assert_held(trace, config)


# -- pins beside a model too big for any device ----------------------------------------------


def test_a_model_bigger_than_any_device_is_refused_507_even_beside_pins() -> None:
    """Pinned P (2 GiB) runs; B needs 12 GiB of a 10 GiB device: its request gets 507 (it fits
    nowhere), not a 503 naming P (that is for a model that pins crowd out). Breaks when
    ``Scheduler.pinned_out`` looks at pins for a model that fits nowhere (mutmut: its ``or``
    made ``and``)."""
    config = RouterConfig((spec("P", pin=True, memory={"gpu0": 2 * GiB}),
                           spec("B", memory={"gpu0": 12 * GiB})),
                          models_max=0, devices={"gpu0": 10 * GiB})
    trace = play(config, [(0.0, Request("P")), (3.0, Request("B"))])
    assert [(r.req, r.status, r.kind) for r in (at.what for at in trace)
            if isinstance(r, Reply)] == [(2, 507, errors.INSUFFICIENT_MEMORY)]
    assert_held(trace, config)


def test_a_model_too_big_for_any_device_costs_the_entries_behind_it_nothing() -> None:
    """One device of 10: A (10) streams; X (6), Big (11: fits nowhere) and Y (4) wait in that
    order. When A has drained and exited, X starts, Big is answered 507, and Y starts in the
    same step, beside X. Breaks when the spawn pass stops at a refused entry (mutmut:
    ``_spawn_heads``' ``continue`` after the 507 made ``break``: Y waits for the next event,
    X's ready)."""
    config = RouterConfig((spec("A", memory={"gpu0": 10}), spec("X", memory={"gpu0": 6}),
                           spec("Big", memory={"gpu0": 11}), spec("Y", memory={"gpu0": 4})),
                          models_max=0, devices={"gpu0": 10})
    trace = play(config, [(0.0, Request("A", 5.0)), (2.0, Request("X")), (2.1, Request("Big")),
                          (2.2, Request("Y"))])
    spawns = [(at.t, at.what.model) for at in trace if isinstance(at.what, Spawn)]
    assert spawns == [(0.0, "A"), (6.1, "X"), (6.1, "Y")], spawns
    refused = [(at.t, at.what.req, at.what.status) for at in trace if isinstance(at.what, Reply)]
    assert refused == [(6.1, 3, 507)], refused
    assert_held(trace, config)


def test_a_pinned_model_is_not_stopped_for_a_model_that_fits_nowhere() -> None:
    """A (persistent group) and pinned P (its own group, in A's way) run idle on a device of
    10; a reload says A needs 11 (the same launch: its child runs on). A is unloaded and
    requested again while its child stops: P is not asked to exit for it (ROUTER.md 7: a pin
    is never stopped for a group), and A's request gets 507 once A's child has exited. Breaks
    when ``_make_way`` skips only pins that are stopping already (mutmut: its ``or
    other.spec.pin`` made ``and``)."""
    a = spec("A", group=KEPT, memory={"gpu0": 4})
    d = Driven(RouterConfig((a, spec("P", pin=True, memory={"gpu0": 4})), models_max=0,
                            devices={"gpu0": 10}))
    old = d.serve(0.1, 1, "A")
    d.at(0.3, ResponseEnded(1))
    d.serve(0.4, 2, "P")
    d.at(0.6, ResponseEnded(2))
    d.at(0.7, CatalogChanged((replace(a, memory={"gpu0": 11}),), (), 9))
    assert stops(d.at(0.8, UnloadAsked(3, "A"))) == [SendExit(old)]
    assert stops(d.at(1.0, RequestArrived(4, "A"))) == []
    got = d.at(1.1, ChildExited(old, 0))
    assert [(c.req, c.status) for c in got if isinstance(c, Reply)] == [(4, 507)], got
    assert stops(d.out) == [SendExit(old)], d.out


def test_requests_queued_for_a_running_model_are_not_refused_for_pins() -> None:
    """One device of 10: pinned P (6) idles, U (4) streams, B (4) waits for U to drain, and
    request 4 for U queues behind B. A reload says U needs 5 now (the same launch: its child
    runs on), too much to load again beside P; but U's child still runs, so request 4 is not
    refused: when B's client leaves, 4 goes to U's child. Breaks when queued entries of a
    running model are refused for pins (mutmut: ``_refuse_pinned_out``'s ``[] if
    model.usable`` made ``[] if (model.usable) and False``)."""
    u = spec("U", memory={"gpu0": 4})
    d = Driven(RouterConfig((spec("P", pin=True, memory={"gpu0": 6}), u,
                             spec("B", memory={"gpu0": 4})), models_max=0, devices={"gpu0": 10}))
    d.serve(0.1, 1, "P")
    d.at(0.3, ResponseEnded(1))
    d.serve(0.4, 2, "U")
    d.at(0.6, RequestArrived(3, "B"))
    d.at(0.7, RequestArrived(4, "U"))
    assert "U" in d.core.scheduler.queue
    got = d.at(0.8, CatalogChanged((replace(u, memory={"gpu0": 5}),), (), 9))
    assert [c for c in got if isinstance(c, Reply)] == [Reply(9, 200, errors.OK)], got
    got = d.at(1.0, ClientGone(3))
    assert [c for c in got if isinstance(c, Forward)] == [Forward(4, "U", d.child("U"))], got
