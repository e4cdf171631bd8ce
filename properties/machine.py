"""A hypothesis state machine over the router core with simulated children.

Hypothesis plays clients (requests, with no model, unknown ones, autoload off; give-ups), an
operator (load, unload, download, remove, reload of the sources with changed, vanished and
re-aliased models and changed memory needs) and a chaos monkey (crashes, hangs, garbage on
stdout, children that sleep, a last line with no newline before an exit, ``ready`` from a child
that is stopping) against the real core, in virtual time. After every step, what ``GET /models``
would list agrees with what ``/models/sse`` published, no guarantee is already broken (a safety
violation fails the program at the step that caused it); a reload stops exactly the running
models that changed or vanished. When the program ends, the run goes on, faults over, until
every request must have been answered, and every guarantee is checked on the whole trace
(safety violations keep the time they happened at). A failure prints the program as Python
steps, ready to paste as a regression test.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from refimpl.core.commands import Kill, Reply, SendExit
from refimpl.core.config import Card, ModelSpec, RouterConfig
from refimpl.core.events import DownloadAsked, LoadAsked, RemoveAsked, UnloadAsked
from refimpl.core.protocol import STATE_PREFIX, ReadyState, format_message
from refimpl.core.router import Phase
from simulator.engine import Simulation
from simulator.faults import Faults

from .invariants import Checking, Violation

MACHINE_FAULTS = Faults(load_time=(0.2, 1.5), exit_time=(0.01, 0.2), wake_time=(0.05, 0.3),
                        download_time=(0.5, 5.0), download_fail=0.2)
DOWNLOADS = ("user/D:F16", "user/E:Q8_0")  # names the program may download from the hub
SETTLE = 2000.0  # virtual seconds the teardown lets the router finish its work

GARBAGE = st.one_of(
    st.binary(max_size=40).map(lambda b: b + b"\n"),
    st.sampled_from([
        STATE_PREFIX + b'{"state": "exploding", "payload": {}}\n',
        STATE_PREFIX + b'{"state": "ready", "payload": [1]}\n',
        STATE_PREFIX + b"{not json\n",
        b"log line with " + STATE_PREFIX + b'{"state": "ready", "payload": {}}\n',
    ]),
)


FOCUS = ("all", "downloads", "queue")


def _held(violations: list[Violation]) -> None:
    """Fail on a guarantee's violations, from one line whether they were found during the
    program or at its end: hypothesis tells failures apart by where they were raised, and
    these are one failure."""
    assert not violations, "\n".join(map(str, violations))


def _outcome_decided() -> bool:
    """Whether hypothesis has already decided this example's outcome: the program ran out of
    choices (an overrun: about half of the programs a shrinker tries) or was rejected. Its
    teardown then runs only because it is in a ``finally``, and hypothesis discards whatever it
    finds, so the settling run and the checks are skipped. (Internal API: with a hypothesis
    that lacks it, or outside a hypothesis run, the checks always run.)"""
    try:
        data = current_build_context().data
    except Exception:  # noqa: BLE001 - no build context: a pasted program, run by hand
        return False
    return getattr(data, "frozen", False) is True


def router_machine(config: RouterConfig, faults: Faults = MACHINE_FAULTS, focus: str = "all"
                   ) -> type[RuleBasedStateMachine]:
    """A state machine class checking ``config`` (policy, limits, devices) against every guarantee.

    ``focus`` narrows what clients ask for, so that short programs reach states that a uniform
    draw seldom builds: ``downloads`` starts both downloads at once and sends most requests to
    them (requests that wait for a download, leave, or meet its failure, removal or cancel);
    ``queue`` sends long requests for known models only (a queue behind busy models, and
    clients that leave it).
    """
    assert focus in FOCUS, focus
    names = [spec.name for spec in config.models]
    aliases = sorted({a for spec in config.models for a in spec.aliases} | {"x-alias"})
    model = st.sampled_from(names)
    model_or_download = st.sampled_from(names + list(DOWNLOADS))
    download_name = st.sampled_from(DOWNLOADS)
    # What a client may name: models, aliases, downloads, nothing, an unknown name.
    asked_name = st.sampled_from([*names, *aliases, *DOWNLOADS, None, "", "nobody"])
    service = st.sampled_from([0.2, 2.0, 30.0])
    if focus == "downloads":
        asked_name = st.sampled_from([*DOWNLOADS, *DOWNLOADS, *names[:2]])
    elif focus == "queue":
        asked_name = st.sampled_from(names)
        service = st.sampled_from([2.0, 30.0])
    specs = {spec.name: spec for spec in config.models}
    devices = sorted(config.devices)

    @st.composite
    def new_spec(draw: Any, name: str) -> ModelSpec | None:
        """The model as the sources say it at a reload: gone, as it was, or changed."""
        old = specs[name]
        change = draw(st.sampled_from(["same", "same", "launch", "alias", "memory", "gone"]))
        if change == "gone":
            return None
        if change == "launch":  # a new file: its card (what GET /models lists) says so too
            version = f"v{draw(st.integers(1, 3))}"
            return ModelSpec(old.name, old.aliases, old.memory, old.stop_timeout,
                             launch=(version,), card=Card("preset", f"/m/{version}.gguf",
                                                          tags=(version,)))
        if change == "alias":
            return ModelSpec(old.name, tuple(draw(st.lists(st.sampled_from(aliases),
                                                           max_size=2, unique=True))),
                             old.memory, old.stop_timeout)
        if change == "memory" and devices:
            memory = {d: draw(st.integers(0, 2 * config.devices[d])) // 4 * 4 for d in devices}
            return ModelSpec(old.name, old.aliases, memory, old.stop_timeout)
        return old

    # The cache's models too: a download listed (maybe under an alias another model has) or gone.
    cached = st.one_of(st.none(), st.builds(ModelSpec, st.just(""), st.lists(
        st.sampled_from(aliases), max_size=1).map(tuple)))
    catalog = st.fixed_dictionaries({name: new_spec(name) for name in names},
                                    optional={d: cached for d in DOWNLOADS})

    class RouterMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.sim: Simulation | None = None
            self.checking = Checking(config)  # every guarantee, fed the trace as it grows
            self.fed = 0  # entries of the trace fed to it
            self.failed = False  # a guarantee failed before the end

        @initialize(seed=st.integers(0, 2**32),
                    opening=st.lists(asked_name, max_size=0 if focus == "all" else 6))
        def start(self, seed: int, opening: list[str | None]) -> None:
            # The faults that matter are rules of the program, so they shrink as steps; the seed
            # only picks load times and how output is cut into reads (the sweeps in
            # test_sweeps.py draw those from st.randoms() instead).
            self.sim = Simulation(config, None, faults, random.Random(seed), duration=0.0,
                                  drain=1e9)
            self.sim.start()
            self.sim.run_until(0.0)
            if focus == "downloads":
                for name in DOWNLOADS:
                    self.sim.api(DownloadAsked, name)
            for name in opening:  # a burst of long requests: most of them wait
                self.sim.request(name, 30.0)

        @property
        def s(self) -> Simulation:
            assert self.sim is not None
            return self.sim

        @rule(model=asked_name, seconds=service,
              autoload=st.sampled_from([None, None, None, True, False]))
        def request(self, model: str | None, seconds: float, autoload: bool | None) -> None:
            self.s.request(model, seconds, autoload=autoload)

        @rule(sources=catalog, whole=st.booleans())
        def reload(self, sources: dict[str, ModelSpec | None], whole: bool) -> None:
            """ROUTER.md: a reload unloads a running model that changed or vanished, no other.
            ``whole``: the sources read whole, as ``GET /models?reload=1`` does: a model they
            do not name vanished too (a download still running excepted)."""
            sources = {name: spec if spec is None or spec.name else ModelSpec(name, spec.aliases)
                       for name, spec in sources.items()}  # a cache entry: named here
            kept = tuple(spec for spec in sources.values() if spec is not None)
            gone = tuple(name for name, spec in sources.items() if spec is None)
            core = self.s.core
            before = {name: (m.spec.launch, m.instance.id) for name, m in core.models.items()
                      if m.usable and m.instance is not None}
            if whole:
                gone = tuple(name for name, m in core.models.items()
                             if name not in {s.name for s in kept} and not m.downloading)
            assert self.s.trace is not None
            start = len(self.s.trace)
            call = self.s.catalog(kept, () if whole else gone, reload=whole)
            after = [at.what for at in self.s.trace[start:]]
            applied = any(isinstance(c, Reply) and c.req == call and c.status == 200
                          for c in after)  # a clash of names refuses the whole reload
            stopped = {c.instance for c in after if isinstance(c, (SendExit, Kill))}
            for name, (launch, instance) in before.items():
                spec = sources.get(name)  # a model the sources do not mention is kept
                changed = applied and (name in gone or (spec is not None and spec.launch != launch))
                if changed:
                    assert instance in stopped, (name, launch, sources.get(name))
                elif instance in stopped:  # only an eviction, for a model the change left waiting
                    assert core.scheduler.queue, (name, launch, sources.get(name))

        @precondition(lambda self: self.sim is not None and self.sim.has_live_child())
        @rule(data=st.data())
        def sleep(self, data: Any) -> None:
            child = self.s.child_of(self.live_model(data))
            assert child is not None
            child.sleep_now()

        @precondition(lambda self: self.sim is not None and self.sim.has_live_child())
        @rule(data=st.data(), code=st.sampled_from([0, 1]))
        def exit_mid_line(self, data: Any, code: int) -> None:
            """The child's last line has no newline, then it exits."""
            child = self.s.child_of(self.live_model(data))
            assert child is not None
            child.write_raw_now(format_message(ReadyState({})).rstrip(b"\n"))
            self.s.at(self.s.now, child.crash, code)

        @precondition(lambda self: self.sim is not None and any(
            c.alive and c.exiting for c in self.sim.children.values()))
        @rule(data=st.data())
        def ready_while_stopping(self, data: Any) -> None:
            stopping = sorted(i for i, c in self.s.children.items() if c.alive and c.exiting)
            child = self.s.children[data.draw(st.sampled_from(stopping), label="instance")]
            child.write_raw_now(format_message(ReadyState({})))

        @rule(seconds=st.sampled_from([0.05, 0.5, 2.0, 15.0]))
        def wait(self, seconds: float) -> None:
            self.s.run_until(self.s.now + seconds)

        @precondition(lambda self: self.sim is not None and bool(self.sim.open))
        @rule(data=st.data())
        def client_gives_up(self, data: Any) -> None:
            req = data.draw(st.sampled_from(sorted(self.s.open)), label="req")
            self.s.give_up(req)

        @precondition(lambda self: self.sim is not None and any(
            r.phase is not Phase.FORWARDED for r in self.sim.core.requests.values()))
        @rule(data=st.data())
        def client_leaves_while_waiting(self, data: Any) -> None:
            """A client leaves before its request reached a child: queued, waiting for its
            model's load or for its download."""
            waiting = sorted(req for req, r in self.s.core.requests.items()
                             if r.phase is not Phase.FORWARDED)
            self.s.give_up(data.draw(st.sampled_from(waiting), label="req"))

        @rule(model=model_or_download)
        def load(self, model: str) -> None:  # of a download: loads it once it is done
            self.s.api(LoadAsked, model)

        @rule(model=model_or_download)
        def unload(self, model: str) -> None:  # of a download: cancels it
            self.s.api(UnloadAsked, model)

        @rule(model=download_name)
        def download(self, model: str) -> None:
            self.s.api(DownloadAsked, model)

        @rule(model=download_name)
        def remove(self, model: str) -> None:
            self.s.api(RemoveAsked, model)

        @invariant()
        def guarantees_hold_so_far(self) -> None:
            """``GET /models`` after every step (``properties.invariants.listing_true`` checks
            each listing against what ``/models/sse`` had published), then every guarantee on
            the trace so far: a violation already certain fails the program at the step that
            caused it (the steps after it are never run, so a failing program is short before
            it is shrunk); the end-of-run checks wait for the teardown."""
            if self.sim is None:
                return
            self.sim.list_models()
            self.check_new_entries()
            violations = self.checking.so_far()
            self.failed = bool(violations)  # (the teardown need not say it again)
            _held(violations)

        def check_new_entries(self) -> None:
            trace = self.s.trace
            assert trace is not None
            self.checking.feed(trace[self.fed:])
            self.fed = len(trace)

        def live_model(self, data: Any) -> str:
            """A model with a live child, drawn so that chaos steps are never no-ops."""
            alive = sorted({c.model for c in self.s.children.values() if c.alive})
            name: str = data.draw(st.sampled_from(alive), label="model")
            return name

        @precondition(lambda self: self.sim is not None and self.sim.has_live_child())
        @rule(data=st.data(), code=st.sampled_from([1, 137, 139]))
        def crash(self, data: Any, code: int) -> None:
            self.s.crash(self.live_model(data), code)

        @precondition(lambda self: self.sim is not None and self.sim.has_live_child())
        @rule(data=st.data())
        def hang_on_exit(self, data: Any) -> None:
            child = self.s.child_of(self.live_model(data))
            assert child is not None
            child.hangs = True

        @precondition(lambda self: self.sim is not None and self.sim.has_live_child())
        @rule(data=st.data(), garbage=GARBAGE)
        def garbage(self, data: Any, garbage: bytes) -> None:
            child = self.s.child_of(self.live_model(data))
            assert child is not None
            child.write_raw_now(garbage)

        def teardown(self) -> None:
            if self.sim is None or self.failed or _outcome_decided():
                return
            self.s.run_until(self.s.now + SETTLE)
            self.check_new_entries()
            _held(self.checking.finish(first_only=True))  # check_all of the whole trace
            partial = sorted(m for m, files in self.s.cache.items() if files != "complete")
            assert not partial, f"partial downloads left in the cache: {partial}"

    RouterMachine.__name__ = RouterMachine.__qualname__ = (
        f"RouterMachine_{config.policy.replace('-', '_')}_{focus}")
    return RouterMachine

