"""The core's small laws, each stated for every input: what a configuration accepts and how it
says what it refuses, the lifecycle table's one checker and the diagram drawn from it, the trace's
text form, what each eviction policy does when the one slot is busy (``scheduler.py``'s
docstring: ``fifo`` never evicts a busy model, ``naive-lru`` evicts the least recently used one at
once, ``drain-timeout`` after ``drain_timeout`` seconds blocked), and the paths a uniform state
machine seldom builds: requests that wait for a download and what ends it (success, failure,
unload, DELETE), waiters of a load stopped before it said ready, a child that ignores the exit
command."""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.core import errors
from refimpl.core.commands import (Forward, Kill, Listed, Log, ModelView, Publish, RemoveFiles,
                                   Reply, SendExit, Spawn)
from refimpl.core.config import POLICIES, Card, ModelSpec, RouterConfig
from refimpl.core.events import (CatalogChanged, ChildExited, ChildOutput, ChildStarted,
                                 ClientGone, DownloadAsked, ListAsked, LoadAsked,
                                 RemoveAsked, RequestArrived, ResponseEnded, RouterStarted,
                                 TimerFired, UnloadAsked)
from refimpl.core.lifecycle import (TRANSITIONS, IllegalTransition, Status, check_transition,
                                    mermaid_diagram)
from refimpl.core.protocol import DownloadResult, ReadyState, format_message
from refimpl.core.router import RouterCore
from refimpl.core.trace import At, format_trace
from simulator.engine import Simulation
from simulator.faults import Faults

NAMES = st.text("abcxyz-:/", min_size=1, max_size=6)
STATUSES = st.sampled_from(list(Status))

# -- configuration ---------------------------------------------------------------------------


@given(name=NAMES, stop_timeout=st.one_of(st.just(0.0), st.just(-0.5),
                                          st.floats(-100, 100, allow_nan=False)),
       memory=st.dictionaries(st.sampled_from(["gpu0", "host"]),
                              st.one_of(st.just(0), st.just(-1), st.integers(-10, 10))))
def test_a_model_spec_refuses_exactly_negative_values(name: str, stop_timeout: float,
                                                      memory: dict[str, int]) -> None:
    """A spec takes any stop timeout and memory need >= 0 (zero included), refuses a negative
    one with a ValueError that names the model, and keeps its own frozen copy of ``memory``."""
    bad = stop_timeout < 0 or any(v < 0 for v in memory.values())
    if bad:
        with pytest.raises(ValueError) as refused:
            ModelSpec(name, memory=memory, stop_timeout=stop_timeout)
        assert str(refused.value).startswith(f"model {name!r}: "), refused.value
        return
    spec = ModelSpec(name, memory=memory, stop_timeout=stop_timeout)
    assert dict(spec.memory) == memory
    memory["other"] = 1
    assert "other" not in spec.memory
    with pytest.raises(TypeError):
        spec.memory["gpu0"] = 1  # type: ignore[index]


specs_strategy = st.lists(st.builds(ModelSpec, NAMES, st.lists(NAMES, max_size=2).map(tuple),
                                    st.dictionaries(st.sampled_from(["gpu0", "host"]),
                                                    st.integers(0, 10)),
                                    st.sampled_from([0.0, 5.0]), st.booleans(),
                                    st.lists(NAMES, max_size=1).map(tuple)),
                          max_size=3)


@given(specs=specs_strategy, models_max=st.integers(-2, 3),
       policy=st.sampled_from([*POLICIES, "lru", "FIFO", ""]),
       devices=st.dictionaries(st.sampled_from(["gpu0", "host"]), st.integers(0, 10)))
def test_a_router_config_refuses_what_it_cannot_run(specs: list[ModelSpec], models_max: int,
                                                    policy: str, devices: dict[str, int]) -> None:
    """A config is refused with a ValueError that starts with what is wrong: a negative
    ``models_max``, an unknown policy (the message lists the known ones), or a name or alias
    that two models (or one model twice) use; every other config is accepted, and its repr
    builds an equal one."""
    names = [n for spec in specs for n in (spec.name, *spec.aliases)]
    duplicate = len(names) != len(set(names))
    if models_max < 0 or policy not in POLICIES or duplicate:
        with pytest.raises(ValueError) as refused:
            RouterConfig(tuple(specs), models_max=models_max, devices=devices, policy=policy)
        message = str(refused.value)
        if models_max < 0:
            assert message.startswith("models_max must be >= 0"), message
        elif policy not in POLICIES:
            assert message.startswith(f"unknown policy {policy!r}; known: "), message
            assert message.split("; known: ")[1].split(", ") == list(POLICIES), message
        else:
            assert message.startswith("model name or alias "), message
            assert any(repr(n) in message for n in names if names.count(n) > 1), message
        return
    config = RouterConfig(tuple(specs), models_max=models_max, devices=devices, policy=policy)
    assert dict(config.devices) == devices
    again = eval(repr(config), {"RouterConfig": RouterConfig, "ModelSpec": ModelSpec})
    assert again == config and repr(again) == repr(config)
    for spec in specs:
        assert eval(repr(spec), {"ModelSpec": ModelSpec}) == spec


# -- the lifecycle table ---------------------------------------------------------------------


@given(model=NAMES, old=STATUSES, new=STATUSES)
def test_check_transition_raises_exactly_for_pairs_missing_from_the_table(
        model: str, old: Status, new: Status) -> None:
    """The one checker: a pair in ``TRANSITIONS`` passes, any other raises IllegalTransition
    carrying the model and both statuses, and saying them."""
    if (old, new) in TRANSITIONS:
        check_transition(model, old, new)
        return
    with pytest.raises(IllegalTransition) as illegal:
        check_transition(model, old, new)
    assert (illegal.value.model, illegal.value.old, illegal.value.new) == (model, old, new)
    assert str(illegal.value) == (f"model {model!r}: illegal transition {old.value} -> "
                                  f"{new.value}")


def test_the_diagram_is_the_table() -> None:
    """The Mermaid diagram read back line by line is exactly ``TRANSITIONS``, causes included."""
    first, *rest = mermaid_diagram().split("\n")
    assert first == "stateDiagram-v2"
    drawn: dict[tuple[Status, Status], str] = {}
    for line in rest:
        assert line.startswith("    "), line
        pair, cause = line.strip().split(": ", 1)
        old, new = pair.split(" --> ")
        drawn[(Status[old], Status[new])] = cause
    assert drawn == TRANSITIONS
    assert len(rest) == len(TRANSITIONS)


# -- the trace's text form -------------------------------------------------------------------

CARDS = st.builds(Card, st.sampled_from(["", "preset", "cache"]),
                  st.one_of(st.none(), st.text(max_size=4)), st.none(),
                  st.lists(st.text(max_size=3), max_size=2).map(tuple),
                  st.lists(st.text(max_size=3), max_size=2).map(tuple), st.booleans(),
                  st.one_of(st.none(), st.dictionaries(NAMES, st.lists(NAMES, max_size=2).map(
                      tuple), max_size=2)))
ENTRIES = st.one_of(
    st.builds(RequestArrived, st.integers(0, 9), st.one_of(st.none(), NAMES)),
    st.builds(ResponseEnded, st.integers(0, 9)), st.builds(ClientGone, st.integers(0, 9)),
    st.builds(ChildExited, st.integers(0, 9), st.integers(-9, 255)),
    st.builds(ChildOutput, st.integers(0, 9), st.binary(max_size=8)),
    st.just(RouterStarted()), st.just(TimerFired()),
    st.builds(Spawn, st.integers(0, 9), NAMES, st.booleans(), CARDS),
    st.builds(Kill, st.integers(0, 9)),
    st.builds(Forward, st.integers(0, 9), NAMES, st.integers(0, 9),
              st.one_of(st.none(), st.just("127.0.0.1:8080"))),
    st.builds(ChildStarted, st.integers(0, 9), st.just("127.0.0.1:8080")),
    st.builds(ListAsked, st.integers(0, 9)),
    st.builds(Listed, st.integers(0, 9), st.lists(st.builds(
        ModelView, NAMES, st.lists(NAMES, max_size=2).map(tuple), st.sampled_from(
            ["loaded", "unloaded"]), CARDS, st.booleans(), st.one_of(st.none(), st.integers(
                -9, 255)), st.dictionaries(NAMES, st.integers(0, 9), max_size=2)),
        max_size=2).map(tuple)),
    st.builds(CatalogChanged, st.lists(st.builds(
        ModelSpec, NAMES, st.just(()), st.dictionaries(NAMES, st.integers(0, 9), max_size=1),
        st.just(1.0), st.booleans(), st.just(()), CARDS), max_size=2).map(tuple),
        st.just(()), st.one_of(st.none(), st.integers(0, 9)), st.booleans()),
    st.builds(Log, st.integers(0, 9), st.text(max_size=8)),
    st.builds(Reply, st.integers(0, 9), st.sampled_from([200, 400, 503]), NAMES, NAMES),
    st.builds(Publish, NAMES, st.sampled_from(["status_change", "model_remove"]),
              st.just({"status": "loaded"})))


@given(trace=st.lists(st.builds(At, st.floats(0, 1e6, allow_nan=False), ENTRIES), max_size=6))
def test_a_formatted_trace_is_one_valid_python_line_per_entry(trace: list[At]) -> None:
    """``format_trace`` writes each entry on its own line, and each line evaluates back to it."""
    text = format_trace(trace)
    assert text.endswith("\n") or not trace
    lines = text.splitlines()
    assert len(lines) == len(trace)
    import refimpl.core.commands as commands
    import refimpl.core.events as events
    scope: dict[str, Any] = {**vars(commands), **vars(events), "At": At, "inf": float("inf"),
                             "Card": Card, "ModelSpec": ModelSpec}
    assert [eval(line, scope) for line in lines] == trace
    assert pickle.loads(pickle.dumps(trace)) == trace  # as --trace writes it


# -- the policies, with one slot and a busy model ---------------------------------------------

STEADY = Faults(load_time=(1.0, 1.0), exit_time=(0.1, 0.1))


def _stops_of_a(policy: str, service: float, gap: float, drain: float) -> tuple[float, float,
                                                                                  float]:
    """A serves one long request; B is asked for ``gap`` s after A's request is forwarded.
    Returns (when B was asked, when A's request ended, when A was first told to stop)."""
    config = RouterConfig((ModelSpec("A", stop_timeout=5.0), ModelSpec("B", stop_timeout=5.0)),
                          models_max=1, policy=policy, drain_timeout=drain)
    sim = Simulation(config, None, STEADY, random.Random(0), duration=0.0, drain=1e9)
    sim.start()
    sim.run_until(0.0)
    sim.request("A", service)
    sim.run_until(1.0 + gap)
    asked = sim.now
    sim.request("B", 1.0)
    sim.run_until(asked + service + drain + 60.0)
    assert sim.trace is not None
    ended = next(e.t for e in sim.trace if isinstance(e.what, ResponseEnded) and e.what.req == 1)
    stopped = next(e.t for e in sim.trace if isinstance(e.what, (SendExit, Kill))
                   and e.what.instance == 1)
    served = [e for e in sim.trace if isinstance(e.what, Forward) and e.what.req == 2]
    assert served, "B's request was never forwarded"
    return asked, ended, stopped


@given(service=st.floats(20.0, 60.0), gap=st.floats(0.0, 5.0), drain=st.floats(1.0, 10.0),
       policy=st.sampled_from(POLICIES))
def test_each_policy_stops_a_busy_model_when_its_docstring_says(policy: str, service: float,
                                                                gap: float, drain: float) -> None:
    """With one slot held by a busy A and a request for B waiting: ``fifo`` stops A only once
    its response has ended, ``naive-lru`` at once, ``drain-timeout`` after ``drain_timeout``
    seconds; B is served in every case."""
    asked, ended, stopped = _stops_of_a(policy, service, gap, drain)
    if policy == "fifo":
        assert stopped >= ended, (stopped, ended)
    elif policy == "naive-lru":
        assert stopped == asked
    else:
        assert stopped == pytest.approx(asked + drain), (stopped, asked, drain)


@given(thing=st.one_of(st.integers(), st.text(max_size=5), st.builds(Kill, st.integers(0, 9))))
def test_the_core_refuses_what_is_not_an_event(thing: object) -> None:
    """``handle`` takes events only: anything else (a command included) is a TypeError naming
    it, before any state changes."""
    core = RouterCore(RouterConfig((ModelSpec("A"),)))
    with pytest.raises(TypeError) as refused:
        core.handle(thing, 0.0)  # type: ignore[arg-type]
    assert str(refused.value) == f"not an event: {thing!r}"
    assert core.handle(RequestArrived(1, "A"), 0.0) == [
        Publish("A", "status_change", {"status": "loading"}), Spawn(1, "A")]


# -- a load that reports ready after it was told to stop --------------------------------------

READY = format_message(ReadyState({}))


@given(waiters=st.integers(1, 3), b_first=st.booleans(), b_asked=st.booleans(),
       leaves=st.sampled_from([None, 1, 2]))
def test_waiters_of_a_load_stopped_before_ready_keep_their_place(waiters: int, b_first: bool,
                                                                 b_asked: bool,
                                                                 leaves: int | None) -> None:
    """Requests waiting for a load whose child says ``ready`` after the router told it to stop
    are neither failed nor sent to it: they go back to the queue with their place in arrival
    order, and the next load serves them in that order (a request for another model that came
    later waits behind them); one whose client leaves meanwhile is never forwarded."""
    config = RouterConfig((ModelSpec("A"), ModelSpec("B")), models_max=1)
    core = RouterCore(config)
    core.handle(RouterStarted(), 0.0)
    out: list[Any] = []
    if b_first:  # B is loaded and idle: A's load evicts it
        out += core.handle(RequestArrived(50, "B"), 0.0)
        out += core.handle(ChildOutput(1, READY), 0.1)
        out += core.handle(ResponseEnded(50), 0.2)
    for req in range(1, waiters + 1):
        out += core.handle(RequestArrived(req, "A"), 1.0 + req)
        if b_first and req == 1:
            out += core.handle(ChildExited(1, 0), 1.5)
    first = [c.instance for c in out if isinstance(c, Spawn) and c.model == "A"]
    assert len(first) == 1, out
    if b_asked:
        out += core.handle(RequestArrived(60, "B"), 5.0)
    out += core.handle(UnloadAsked(99, "A"), 6.0)
    out += core.handle(ChildOutput(first[0], READY), 6.1)
    gone = leaves if leaves is not None and leaves < waiters else None  # one stays for A
    if gone is not None:
        out += core.handle(ClientGone(gone), 6.15)
    out += core.handle(ChildExited(first[0], 137), 6.2)
    second = [c.instance for c in out if isinstance(c, Spawn) and c.model == "A"][1:]
    assert len(second) == 1, out
    out += core.handle(ChildOutput(second[0], READY), 7.0)
    forwards = [c for c in out if isinstance(c, Forward)]
    errors_ = [c for c in out if isinstance(c, Reply) and c.req != 99]
    assert not errors_, errors_
    to_a = [f.req for f in forwards if f.model == "A"]
    assert to_a == [r for r in range(1, waiters + 1) if r != gone], out
    assert all(f.instance == second[0] for f in forwards if f.model == "A"), out
    assert not any(f.req == 60 for f in forwards), out  # B waits behind A's requests
    if b_asked:
        assert core.requests[60].phase.value == "queued"


# -- requests that wait for a download, and what ends it ----------------------------------------

D = "u/d:Q"
READY_LINE = READY
DONE = format_message(DownloadResult(True))


class Driven:
    """A core driven by hand, collecting every command; children ready at once when asked."""

    def __init__(self, *names: str) -> None:
        self.core = RouterCore(RouterConfig(tuple(ModelSpec(n, stop_timeout=5.0) for n in names),
                                            models_max=1))
        self.out: list[Any] = []
        self.now = 0.0
        self.send(RouterStarted())

    def send(self, event: Any) -> list[Any]:
        self.now += 0.1
        got = self.core.handle(event, self.now)
        self.out += got
        return got

    def child(self, model: str, download: bool = False) -> int:
        return [c.instance for c in self.out if isinstance(c, Spawn) and c.model == model
                and c.download == download][-1]

    def replies(self, req: int) -> list[tuple[int, str]]:
        return [(c.status, c.kind) for c in self.out if isinstance(c, Reply) and c.req == req]

    def forwarded(self) -> list[int]:
        return [c.req for c in self.out if isinstance(c, Forward)]


def busy_a_and_a_download(waiters: int, b_waits: bool) -> Driven:
    """A serves request 1 in the one slot; B's request 2 (if ``b_waits``) is queued; D is
    downloading with requests 21.. waiting for it."""
    d = Driven("A", "B")
    d.send(RequestArrived(1, "A"))
    d.send(ChildOutput(d.child("A"), READY_LINE))
    assert d.forwarded() == [1]
    d.send(DownloadAsked(10, D))
    for i in range(waiters):
        d.send(RequestArrived(21 + i, D))
    if b_waits:
        d.send(RequestArrived(2, "B"))
    return d


@given(waiters=st.integers(1, 3), b_waits=st.booleans(), when=st.sampled_from(
    ["downloading", "queued"]))
def test_a_removed_download_answers_everyone_waiting_for_it(waiters: int, b_waits: bool,
                                                            when: str) -> None:
    """``DELETE /models`` of a model that requests wait for (its download, or the queue once
    downloaded) answers each of them 404 model_removed at once, and the call 200 once nothing
    runs for it and its files are removed; no child is ever started for it."""
    d = busy_a_and_a_download(waiters, b_waits)
    if when == "queued":
        d.send(ChildOutput(d.child(D, download=True), DONE))
        d.send(ChildExited(d.child(D, download=True), 0))
    d.send(RemoveAsked(40, D))
    for i in range(waiters):
        assert d.replies(21 + i) == [(404, "model_removed")], d.out
    if when == "downloading":
        assert d.replies(40) == []
        d.send(ChildExited(d.child(D, download=True), 0))
    assert d.replies(40) == [(200, "ok")] and RemoveFiles(D) in d.out and D not in d.core.models
    d.send(ResponseEnded(1))
    assert not [c for c in d.out if isinstance(c, Spawn) and c.model == D and not c.download]
    if b_waits:
        d.send(ChildExited(d.child("A"), 0))
        d.send(ChildOutput(d.child("B"), READY_LINE))
        assert d.forwarded() == [1, 2]


@given(waiters=st.integers(1, 3), load=st.booleans(), ended=st.booleans())
def test_an_unload_of_a_download_cancels_what_waits_for_it(waiters: int, load: bool,
                                                          ended: bool) -> None:
    """``POST /models/unload`` of a downloading model cancels the download and what waits for
    it: a load asked for it and its requests (503) — also when the download has just finished
    and its child is still exiting; the call is answered 200 once the child is gone, and no
    child is started for the model."""
    d = Driven("A")
    d.send(DownloadAsked(10, D))
    for i in range(waiters):
        d.send(RequestArrived(21 + i, D))
    if load:
        assert d.send(LoadAsked(30, D)) == [Reply(30, 200, "ok")]
    if ended:
        d.send(ChildOutput(d.child(D, download=True), DONE))
    d.send(UnloadAsked(50, D))
    assert d.replies(50) == []
    d.send(ChildExited(d.child(D, download=True), 0 if ended else 137))
    assert d.replies(50) == [(200, "ok")]
    for i in range(waiters):
        assert [s for s, _ in d.replies(21 + i)] == [503], d.out
    assert not [c for c in d.out if isinstance(c, Spawn) and c.model == D and not c.download]
    assert (D in d.core.models) == ended  # a finished download stays, as an ordinary model


@given(waiters=st.integers(2, 3), leaves=st.integers(0, 2), b_waits=st.booleans())
def test_requests_that_waited_for_a_download_queue_from_its_end(waiters: int, leaves: int,
                                                               b_waits: bool) -> None:
    """When a download finishes, the requests that waited for it join the queue at its end
    (behind a request for another model that came before), are served in their arrival order,
    and one whose client left meanwhile is never forwarded."""
    d = busy_a_and_a_download(waiters, b_waits)
    d.send(ChildOutput(d.child(D, download=True), DONE))
    d.send(ChildExited(d.child(D, download=True), 0))
    gone = 21 + min(leaves, waiters - 1)
    d.send(ClientGone(gone))
    d.send(ResponseEnded(1))
    d.send(ChildExited(d.child("A"), 0))
    if b_waits:
        d.send(ChildOutput(d.child("B"), READY_LINE))
        assert d.forwarded() == [1, 2]
        d.send(ResponseEnded(2))
        d.send(ChildExited(d.child("B"), 0))
    d.send(ChildOutput(d.child(D), READY_LINE))
    expected = [r for r in range(21, 21 + waiters) if r != gone]
    assert d.forwarded() == [1, *([2] if b_waits else []), *expected], d.out
    assert not d.replies(gone)


# -- stopping a child -----------------------------------------------------------------------


@given(stop_timeout=st.floats(0.5, 20.0), again=st.floats(0.0, 5.0))
def test_a_child_that_ignores_exit_is_killed_stop_timeout_after_the_first_ask(
        stop_timeout: float, again: float) -> None:
    """A ready child asked to exit gets its model's ``stop_timeout`` to go, counted from the
    first ask: a second unload sends nothing more and does not postpone the kill."""
    core = RouterCore(RouterConfig((ModelSpec("A", stop_timeout=stop_timeout),)))
    core.handle(RequestArrived(1, "A"), 0.0)
    core.handle(ChildOutput(1, READY), 0.5)
    core.handle(ResponseEnded(1), 0.6)
    assert core.handle(UnloadAsked(2, "A"), 1.0) == [SendExit(1), Reply(2, 200, "ok")]
    assert core.next_timer() == 1.0 + stop_timeout
    second = core.handle(UnloadAsked(3, "A"), 1.0 + again)
    assert not [c for c in second if isinstance(c, (SendExit, Kill))], second
    assert core.next_timer() == 1.0 + stop_timeout
    assert core.handle(TimerFired(), 1.0 + stop_timeout) == [Kill(1)]
    assert core.next_timer() is None


@given(req=st.integers(1, 5))
def test_the_end_of_a_response_the_core_has_forgotten_changes_nothing(req: int) -> None:
    """A response that ends after its client left (the proxy and the disconnect race), or of a
    request the core never saw, is ignored."""
    core = RouterCore(RouterConfig((ModelSpec("A"),)))
    core.handle(RequestArrived(1, "A"), 0.0)
    core.handle(ChildOutput(1, READY), 0.5)
    assert core.handle(ClientGone(1), 1.0) == []
    assert core.handle(ResponseEnded(req), 1.1) == []
    assert core.handle(ResponseEnded(1), 1.2) == []


@given(waiters=st.integers(1, 3), how=st.sampled_from(["vanished", "removed"]))
def test_waiters_of_a_model_on_its_way_out_are_answered_when_its_child_exits(
        waiters: int, how: str) -> None:
    """Requests waiting for a load of a model that a reload dropped (or a DELETE removed) get a
    503 when its child exits, even if the child said ``ready`` after it was told to stop: no
    load of that model comes again to serve them."""
    name = "A" if how == "vanished" else D
    d = Driven("A", "B")
    if how == "removed":  # a cache model: downloaded, then loading for the requests
        d.send(DownloadAsked(10, D))
        d.send(ChildOutput(d.child(D, download=True), DONE))
        d.send(ChildExited(d.child(D, download=True), 0))
    for i in range(waiters):
        d.send(RequestArrived(21 + i, name))
    if how == "vanished":
        d.send(CatalogChanged((ModelSpec("B"),), ("A",), 40))
    else:
        d.send(RemoveAsked(40, D))
    d.send(ChildOutput(d.child(name), READY_LINE))
    at_exit = d.send(ChildExited(d.child(name), 137))
    for i in range(waiters):
        assert d.replies(21 + i) == [(503, "model_load_failed")], d.out
    assert d.replies(40) == [(200, "ok")] and name not in d.core.models and not d.core.requests
    if how == "vanished":  # gone from the catalog once its child has exited, and said so
        assert Publish("A", "model_remove") in at_exit, at_exit


# -- the text of a trace entry, and a card ---------------------------------------------------


def test_a_spawn_without_a_card_writes_as_before_cards() -> None:
    """Traces recorded before cards stay byte-comparable: a spawn with the default card writes
    no card at all; one with a card writes it."""
    assert repr(Spawn(1, "a")) == "Spawn(instance=1, model='a', download=False)"
    card = Card("cache", "/m/a.gguf")
    assert repr(Spawn(1, "a", card=card)) == (
        f"Spawn(instance=1, model='a', download=False, card={card!r})")


@given(arch=st.dictionaries(NAMES, st.lists(NAMES, max_size=3), max_size=3))
def test_a_card_keeps_its_modalities_frozen(arch: dict[str, list[str]]) -> None:
    """A card holds the modalities it was given, as tuples, and cannot be changed through them."""
    card = Card(architecture=arch)
    assert card.architecture is not None
    assert dict(card.architecture) == {k: tuple(v) for k, v in arch.items()}
    with pytest.raises(TypeError):
        card.architecture["x"] = ()  # type: ignore[index]


# -- requests with autoload off ---------------------------------------------------------------


@given(waiters=st.integers(0, 2))
def test_autoload_off_for_a_model_still_downloading_is_refused_at_once(waiters: int) -> None:
    """ROUTER.md: autoload off for a model that is not running is 400 ``model_not_loaded``; a
    model still downloading is not running (and the requests that may wait for it still do)."""
    d = Driven("A")
    d.send(DownloadAsked(10, D))
    for i in range(waiters):
        d.send(RequestArrived(21 + i, D))
    got = d.send(RequestArrived(30, D, autoload=False))
    assert got == [Reply(30, 400, errors.MODEL_NOT_LOADED,
                         f"model {D!r} is not loaded (still downloading)")]
    assert all(d.replies(21 + i) == [] for i in range(waiters))


def test_autoload_off_waiting_for_a_load_that_was_stopped_is_refused() -> None:
    """A request with autoload off joined A's load; A was unloaded while loading (killed), and
    its ``ready`` came before its exit: the request gets what autoload off gets for a model not
    running; a request with autoload on queues again for the next load."""
    d = Driven("A")
    d.send(RequestArrived(1, "A"))
    d.send(RequestArrived(2, "A", autoload=False))
    inst = d.child("A")
    assert Kill(inst) in d.send(UnloadAsked(3, "A"))
    d.send(ChildOutput(inst, READY_LINE))
    assert d.replies(2) == [(400, errors.MODEL_NOT_LOADED)]
    assert [c for c in d.out if isinstance(c, Reply) and c.req == 2][0].message == \
        "model 'A' is not loaded"
    assert d.replies(1) == [] and 1 in d.core.scheduler.queue["A"].waiters
    d.send(ChildExited(inst, -9))
    assert d.child("A") != inst  # the next load, for request 1


def test_autoload_off_held_behind_a_drain_is_refused_when_the_model_crashes() -> None:
    """Held behind B's drain, a request with autoload off is answered when B's child crashes
    (not stopped by the router): B is not running any more."""
    d = Driven("A", "B")
    d.send(RequestArrived(1, "B"))
    b = d.child("B")
    d.send(ChildOutput(b, READY_LINE))
    d.send(RequestArrived(2, "A"))  # B drains for it
    d.send(RequestArrived(3, "B", autoload=False))
    assert d.replies(3) == [] and 3 not in d.forwarded()
    got = d.send(ChildExited(b, 139))
    assert Reply(3, 400, errors.MODEL_NOT_LOADED, "model 'B' is not loaded (it was unloaded "
                 "while the request waited for its turn)") in got
    assert d.child("A") is not None


def test_a_clash_after_a_downloading_model_in_the_same_change_is_still_refused() -> None:
    """A catalog change naming a model still downloading (left alone) and, after it, a model
    that takes another's alias is refused as a whole."""
    d = Driven("A")
    a_alias = ModelSpec("A", aliases=("a1",))
    d.send(CatalogChanged((a_alias,), (), 5))
    d.send(DownloadAsked(10, D))
    got = d.send(CatalogChanged((a_alias, ModelSpec(D), ModelSpec("C", aliases=("a1",))), (),
                                6))
    assert Reply(6, 400, errors.INVALID_REQUEST,
                 "name 'a1' of model 'C' already belongs to model 'A'") in got
    assert "C" not in d.core.models


# -- a reload while requests wait in the queue -------------------------------------------------


@given(waiters=st.integers(1, 3))
def test_a_reload_that_drops_a_queued_model_answers_its_waiters_at_once(waiters: int) -> None:
    """A serves in the one slot; B's requests wait in the queue for it. A reload that no longer
    names B answers each of them 404 ``model_removed`` at once, naming B; A keeps serving."""
    d = Driven("A", "B")
    d.send(RequestArrived(1, "A"))
    d.send(ChildOutput(d.child("A"), READY_LINE))
    for i in range(waiters):
        d.send(RequestArrived(21 + i, "B"))
    got = d.send(CatalogChanged((ModelSpec("A", stop_timeout=5.0),), (), 40, reload=True))
    for i in range(waiters):
        assert Reply(21 + i, 404, errors.REMOVED,
                     "model 'B' is no longer in the model sources") in got, got
    assert "B" not in d.core.scheduler.queue and d.replies(40) == [(200, "ok")]
    assert d.replies(1) == [] and not any(isinstance(c, (Kill, SendExit)) for c in got)


def test_a_reload_that_lets_a_queued_model_fit_starts_it_at_once() -> None:
    """Two devices' worth of need: B waits for memory A holds (A busy, fifo never evicts it).
    A reload that halves B's need lets B fit beside A: B starts in the same step, and its
    request joins that load; under drain-timeout the drain deadline set while B was blocked is
    dropped once B fits."""
    for policy in ("fifo", "drain-timeout"):
        specs = (ModelSpec("A", memory={"gpu0": 6}), ModelSpec("B", memory={"gpu0": 6}))
        core = RouterCore(RouterConfig(specs, devices={"gpu0": 10}, policy=policy))
        core.handle(RouterStarted(), 0.0)
        core.handle(RequestArrived(1, "A"), 0.1)
        core.handle(ChildOutput(1, READY), 0.2)
        core.handle(RequestArrived(2, "B"), 0.3)
        assert (core.next_timer() is not None) == (policy == "drain-timeout")
        got = core.handle(CatalogChanged((specs[0], ModelSpec("B", memory={"gpu0": 4})), (),
                                         9, reload=True), 0.4)
        assert [c for c in got if isinstance(c, Spawn)] == [Spawn(2, "B")], (policy, got)
        assert core.models["B"].waiters == [2] and core.next_timer() is None


def test_drain_timeout_with_more_models_on_start_than_slots_waits_without_a_deadline() -> None:
    """Under drain-timeout, two models loaded on start-up and one slot: the first loads, the
    second waits for it, blocked, with the drain deadline ``drain_timeout`` after the start."""
    specs = (ModelSpec("A", load_on_startup=True), ModelSpec("B", load_on_startup=True))
    core = RouterCore(RouterConfig(specs, models_max=1, policy="drain-timeout"))
    got = core.handle(RouterStarted(), 0.0)
    assert [c.model for c in got if isinstance(c, Spawn)] == ["A"]
    assert "B" in core.scheduler.queue
    assert core.next_timer() == core.config.drain_timeout


def test_a_downloading_model_named_in_a_change_is_left_alone_even_with_a_taken_alias() -> None:
    """A change that names a model still downloading leaves that spec alone (its download child
    says how it ends), so an alias in it that another model holds refuses nothing: the rest of
    the change is applied."""
    d = Driven("A")
    d.send(CatalogChanged((ModelSpec("A", aliases=("a1",)),), (), 5))
    d.send(DownloadAsked(10, D))
    got = d.send(CatalogChanged((ModelSpec("A", aliases=("a1",)), ModelSpec(D, aliases=("a1",)),
                                 ModelSpec("C")), (), 6))
    assert Reply(6, 200, errors.OK) in [c for c in got if isinstance(c, Reply)], got
    assert "C" in d.core.models and d.core.resolve("a1") == "A"


def test_a_load_through_the_api_evicts_an_idle_model_and_times_its_stop() -> None:
    """POST /models/load of B while A idles in the one slot: A is asked to exit at once, with
    its kill due ``stop_timeout`` later."""
    d = Driven("A", "B")
    d.send(RequestArrived(1, "A"))
    a = d.child("A")
    d.send(ChildOutput(a, READY_LINE))
    d.send(ResponseEnded(1))
    got = d.send(LoadAsked(2, "B"))
    assert SendExit(a) in got and d.core.next_timer() == pytest.approx(d.now + 5.0)


def test_models_loaded_through_the_api_are_evicted_by_when_they_became_ready() -> None:
    """Two slots, A then B loaded through the API (no request yet): C evicts A, the least
    recently used, by the time it became ready."""
    core = RouterCore(RouterConfig((ModelSpec("A"), ModelSpec("B"), ModelSpec("C")),
                                   models_max=2))
    core.handle(RouterStarted(), 0.0)
    core.handle(LoadAsked(1, "A"), 0.1)
    core.handle(ChildOutput(1, READY), 0.2)
    core.handle(LoadAsked(2, "B"), 0.3)
    core.handle(ChildOutput(2, READY), 0.4)
    got = core.handle(RequestArrived(3, "C"), 0.5)
    assert [c for c in got if isinstance(c, (SendExit, Kill))] == [SendExit(1)], got


def test_a_model_counts_only_on_the_devices_its_spec_names() -> None:
    """A needs all of gpu0 and nothing of gpu1; B needs all of gpu1: both run at once."""
    specs = (ModelSpec("A", memory={"gpu0": 10}), ModelSpec("B", memory={"gpu1": 10}))
    core = RouterCore(RouterConfig(specs, devices={"gpu0": 10, "gpu1": 10}))
    core.handle(RouterStarted(), 0.0)
    core.handle(RequestArrived(1, "A"), 0.1)
    core.handle(ChildOutput(1, READY), 0.2)
    got = core.handle(RequestArrived(2, "B"), 0.3)
    assert Spawn(2, "B") in got and not any(isinstance(c, (SendExit, Kill)) for c in got)


def test_a_running_child_counts_with_the_need_it_was_started_with() -> None:
    """A runs busy with the 6 of 10 its spec said at its start; a reload that says 2 now (same
    launch: A is not restarted) does not make room: B, which needs 6, waits for A."""
    specs = (ModelSpec("A", memory={"gpu0": 6}), ModelSpec("B", memory={"gpu0": 6}))
    core = RouterCore(RouterConfig(specs, devices={"gpu0": 10}))
    core.handle(RouterStarted(), 0.0)
    core.handle(RequestArrived(1, "A"), 0.1)
    core.handle(ChildOutput(1, READY), 0.2)
    core.handle(CatalogChanged((ModelSpec("A", memory={"gpu0": 2}), specs[1]), (), 9,
                               reload=True), 0.3)
    got = core.handle(RequestArrived(2, "B"), 0.4)
    assert not any(isinstance(c, Spawn) for c in got), got
    assert "B" in core.scheduler.queue


@pytest.mark.parametrize("first", ["loading", "download"])
def test_an_idle_model_is_a_victim_whatever_child_came_before_it(first: str) -> None:
    """A child that cannot be evicted was started first: a model still loading (two slots),
    or a download (it takes no slot; one slot). B idles in the slot left. C evicts B at once."""
    core = RouterCore(RouterConfig((ModelSpec("A"), ModelSpec("B"), ModelSpec("C")),
                                   models_max=2 if first == "loading" else 1))
    core.handle(RouterStarted(), 0.0)
    if first == "loading":
        core.handle(RequestArrived(1, "A"), 0.1)  # instance 1 loads, and does not say ready
    else:
        core.handle(DownloadAsked(1, D), 0.1)  # instance 1 downloads (it takes no slot)
    core.handle(RequestArrived(2, "B"), 0.2)
    core.handle(ChildOutput(2, READY), 0.3)
    core.handle(ResponseEnded(2), 0.4)
    got = core.handle(RequestArrived(3, "C"), 0.5)
    stops = [c for c in got if isinstance(c, (SendExit, Kill))]
    assert stops == [SendExit(2)], got


@pytest.mark.parametrize("by", ["B", "b1"])
def test_a_model_a_reload_dropped_is_unknown_while_its_child_stops(by: str) -> None:
    """B runs (with alias b1) when a reload drops it: from that event on, its names resolve to
    nothing, so a request naming it is refused as unknown at once, though B's child is still
    stopping; it does not wait for B, nor reach it."""
    core = RouterCore(RouterConfig((ModelSpec("A"), ModelSpec("B", aliases=("b1",))),
                                   models_max=2))
    core.handle(RouterStarted(), 0.0)
    core.handle(RequestArrived(1, "B"), 0.1)
    core.handle(ChildOutput(1, READY), 0.2)
    core.handle(ResponseEnded(1), 0.3)
    assert SendExit(1) in core.handle(CatalogChanged((ModelSpec("A"),), (), 9, reload=True), 0.4)
    got = core.handle(RequestArrived(2, by), 0.5)
    assert [(c.status, c.kind) for c in got if isinstance(c, Reply)] == [
        (400, errors.MODEL_NOT_FOUND)], got
    assert core.resolve(by) is None and 2 not in core.requests
