"""The whole router under simulation (``simulator/whole.py``): hypothesis chooses the program
(requests and streams, clients that leave, loads, unloads, reloads, downloads and removals,
crashes, odd paths and bodies), the world (faults, late and failing spawns, deaf children,
sleeping children, a flaky network) and the seed that orders trio's scheduling, and the real
driver and HTTP app must hold every guarantee.

A failure prints the program and its seed; ``run_program(<program>).check()`` replays it exactly.
The pinned programs below are the shrunk counterexamples of the bugs the simulation found.

    python -m properties.test_whole_router find      # search until a failure: time and program
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from simulator.whole import (
    Chat,
    Crash,
    Download,
    Get,
    Load,
    Program,
    Reload,
    Remove,
    Unload,
    Watch,
    World,
    run_program,
)

MODELS = ("a", "b")
CACHED = ("tiny/x-GGUF:Q8_0", "tiny/x-GGUF:F16")  # once downloaded
model = st.sampled_from(MODELS) | st.sampled_from(CACHED)
after = st.sampled_from([0.0, 0.0, 0.0, 0.001, 0.01, 0.1, 0.5, 2.0])
leave = st.none() | st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.2, 1.0, 3.0])
PATHS = ("/props", "/props%00", "/slots", "/v1/models/x%0a", "/completion", "/props%7f",
         "/a%20b", "/metrics", "/caf\u00e9", "/%25%2F..%2f")
BODIES = ("", "{", "[]", '{"model": 7}', '{"model": null}', '{"model": "a", "stream": "yes"}',
          '{"model": "b"' + ", " * 3 + "}", '[[[[[[[[[[]]]]]]]]]]', '{"model": "zz"}')

actions = st.one_of(
    st.builds(Chat, model, stream=st.booleans(), leave=leave, after=after,
              tokens=st.sampled_from([4, 4, 4, 300])),
    st.builds(Chat, model, leave=leave, body=st.sampled_from(BODIES), after=after),
    st.builds(Get, st.sampled_from(PATHS), model, extra=st.sampled_from(["", "foo=1", "x=%00", "q=\u00e9&r=a+b"]),
              leave=leave, after=after),
    st.builds(Load, model, after=after),
    st.builds(Unload, model, after=after),
    st.builds(Reload, model, change=st.sampled_from(["flags", "remove", "restore"]),
              after=after),
    st.builds(Crash, model, after=after),
    st.builds(Download, st.sampled_from(["tiny/x-GGUF", *CACHED, "tiny/nope", "bad name"]),
              after=after),
    st.builds(Remove, model, after=after),
    st.builds(Watch, leave=st.sampled_from([0.0, 0.5, 5.0]), after=after),
)
worlds = st.builds(World, models=st.just(MODELS), models_max=st.sampled_from([1, 2, 0]),
                   faults=st.sampled_from(["none", "light", "heavy", "sleepy"]),
                   spawn_delay=st.sampled_from([0.0, 0.01]),
                   spawn_fail=st.sampled_from([0.0, 0.1]),
                   ignore_stdin=st.sampled_from([0.0, 0.3]),
                   http_fail=st.sampled_from([0.0, 0.05]),
                   odd_headers=st.sampled_from([0.0, 0.3]))
programs = st.builds(Program, st.lists(actions, min_size=1, max_size=12).map(tuple), worlds,
                     st.integers(0, 2**16))


# The bug zoo's triggers (shared/spec/BUGZOO.md) that random programs reach only now and then.
@example(Program((Chat("a"), Chat("b", after=2.0), Chat("a", after=0.05)), World()))  # Z9
@example(Program((Chat("a", stream=True, tokens=300), Chat("b", after=1.0)), World()))  # Z2, Z19
@example(Program((Chat("a"), Chat("b")), World(models_max=0)))  # Z17
@given(programs)
def test_the_whole_router_holds_every_guarantee(program: Program) -> None:
    run_program(program).check()


# -- the bugs it found, each pinned by its shrunk program -------------------------------------------

def test_a_control_character_in_a_proxied_path_does_not_hold_the_model() -> None:
    """Found in 0.2-1.8 s, shrunk to 1 step: ``GET /props%00?model=a`` answered 500 (httpx
    refused the decoded path after the request was routed) and the model stayed busy for ever.
    Now the path goes to the child as the client sent it, and whatever fails after routing
    still ends the request in the core (app.py ``_proxy``)."""
    run = run_program(Program((Get(path='/props%00', model='a'),), World(), seed=0))
    run.check()
    assert run.exchanges[0].status == 200  # the child got "/props%00" and answered


def test_a_path_with_a_newline_reaches_the_child_as_sent() -> None:
    """Found once the first two were fixed: ``%0a`` reached the child as nothing (URLs drop
    tabs and newlines), so a child saw another path than the client sent."""
    run_program(Program((Chat(model='a'), Get(path='/v1/models/x%0a', model='a')), World(),
                        seed=0)).check()


def test_a_child_unloaded_while_it_starts_is_stopped() -> None:
    """Found in 0.2-3.8 s, shrunk to 2 steps: an unload that comes before the driver has the
    child from its spawner (trio ran the unload first) lost its Kill; the child loaded, the
    model read ``loaded``, and every request waited for ever behind its slot. The driver now
    keeps the stops asked for a starting child and carries them out once it is there."""
    run_program(Program((Unload(model='a'), Chat(model='a')), World(), seed=1)).check()
    run_program(Program((Chat(model='a'), Unload(model='a')), World(), seed=0)).check()


def test_a_thousand_quick_load_unload_pairs_leave_the_router_working() -> None:
    """The report of issue 11, as it came: 1000 load + unload pairs on one model, then a chat
    to it and to another model (with models_max 1); before the fix both waited for ever.
    Live, against the real router and fake children on this busy 2-core machine: 2 of 2 runs
    stuck before the fix (``a`` read ``loaded``, both chats timed out), 0 of 2 after."""
    steps = [step for _ in range(1000) for step in (Load("a"), Unload("a"))]
    run = run_program(Program((*steps, Chat("a", after=1.0), Chat("b")), World(), seed=0))
    run.check()
    assert [e.status for e in run.exchanges[-2:]] == [200, 200]


def test_a_reload_that_removes_an_idle_model_answers() -> None:
    """Found on the way: removing a model that was not running from the sources answered 500
    (``KeyError``), and the reload's other changes were lost."""
    run_program(Program((Chat(model='a'), Chat(model='a'),
                         Reload(model='b', change='remove')), World(), seed=0)).check()


def test_a_child_header_the_server_cannot_write_does_not_hold_the_model() -> None:
    """Found in 2.9 s once children could answer with a header value holding a DEL (httpx
    takes it, uvicorn will not write it), shrunk to 2 steps: the answer failed with a 500 after
    routing; streamed, the relay never started, so its end was never told and the model stayed
    busy for ever. The proxy now drops such headers, and a streamed answer always ends."""
    run_program(Program((Download(model='tiny/x-GGUF'), Chat(model='a')),
                        World(odd_headers=0.3), seed=0)).check()
    run_program(Program((Chat("a", stream=True), Chat("b", after=2.0)),
                        World(odd_headers=1.0), seed=0)).check()


def test_a_downloaded_model_serves_then_goes() -> None:
    program = Program((Download("tiny/x-GGUF"), Chat("tiny/x-GGUF:Q8_0", after=0.5),
                       Remove("tiny/x-GGUF:Q8_0", after=8.0), Chat("tiny/x-GGUF:Q8_0", after=3.0),
                       Download("tiny/nope")), World(), seed=3)
    run = run_program(program)
    run.check()
    assert [e.status for e in run.exchanges] == [200, 200, 200, 400, 400]


def test_a_router_that_never_stops_is_cut_and_reported() -> None:
    run = run_program(Program((Chat("a"), Chat("b", after=0.1)), World(max_trace=30), seed=3))
    assert run.runaway
    assert any(v.startswith("runaway:") for v in run.violations())


def test_a_run_replays_exactly() -> None:
    program = Program((Chat("a", stream=True), Chat("b", after=0.01), Load("a", after=0.1),
                       Crash("b", after=0.2), Chat("b", leave=0.05, after=0.1)),
                      World(faults="light", spawn_delay=0.01), seed=7)
    first, second = run_program(program), run_program(program)
    assert first.trace == second.trace
    assert [(e.status, bytes(e.body)) for e in first.exchanges] == \
        [(e.status, bytes(e.body)) for e in second.exchanges]


def find(max_examples: int = 5000) -> None:
    """Search with fresh randomness until a program fails; print the time to the first failure,
    then the shrunk program and its number of steps."""
    chosen = dict(max_examples=max_examples, database=None, deadline=None)
    started = time.perf_counter()
    test = given(programs)(lambda program: run_program(program).check())
    try:
        settings(phases=[Phase.generate], **chosen)(test)()  # type: ignore[arg-type]
    except AssertionError:
        found = time.perf_counter() - started
    else:
        print(f"no failure in {max_examples} programs ({time.perf_counter() - started:.1f} s)")
        return
    print(f"first failure after {found:.1f} s; shrinking ...", flush=True)
    started = time.perf_counter()
    failing: list[Program] = []

    def keep(program: Program) -> None:
        try:
            run_program(program).check()
        except AssertionError:
            failing.append(program)
            raise
    try:
        settings(**chosen)(given(programs)(keep))()  # type: ignore[arg-type]
    except AssertionError as exc:
        shrunk = failing[-1]
        print(f"shrunk in {time.perf_counter() - started:.1f} s to {len(shrunk.steps)} step(s):"
              f"\n{shrunk!r}\n{str(exc).splitlines()[1:3]}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["find"]:
        find()


def test_a_signal_for_a_reaped_child_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Z16 lives in ``ChildProcess.kill``, which the simulated children run as it is; every
    ``os.kill`` it sends reaches the world, never a real process. The router never reaches the
    bug: the driver forgets a child in the step that reaps it (``Driver._run_child``), so no
    Kill finds a reaped child, and ``python -m properties.zoo Z16 --tests
    properties/test_whole_router.py`` leaves Z16 alive. Both checks are shown failing here on a
    driver that kills each child it reaps: its own misuse, and with Z16's kill, the signal."""
    from simulator.whole import SimProcess

    wait = SimProcess.wait

    async def wait_then_kill(self: SimProcess) -> int:  # the driver's half of upstream #22452
        code = await wait(self)
        self.kill()
        return code

    def z16_kill(self: SimProcess) -> None:  # the zoo's Z16: no guard, the pid is signalled
        os.kill(self.process.pid, 9)

    monkeypatch.setattr(SimProcess, "wait", wait_then_kill)
    program = Program((Chat("a"), Crash("a", after=1.0)), World(), seed=0)
    problems = run_program(program).violations()
    assert any("was killed after it was reaped" in p for p in problems), problems
    assert not any("signal" in p for p in problems), problems  # the guard held
    monkeypatch.setattr("refimpl.router.processes.ChildProcess.kill", z16_kill)
    problems = run_program(program).violations()
    assert any("signal 9 sent to pid" in p and "after it was reaped" in p
               for p in problems), problems
