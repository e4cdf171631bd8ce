"""The live search (``conformance/search.py``), bounded: it finds a bug-zoo mutant of the
reference router and shrinks it to a reproduction that fails on the mutant and passes without it,
and a short search of the correct router finds nothing.

The searches here have budgets (an upper bound; each ends as soon as it has its answer). The
quick profile's full search is off by default, like the llama-server column of the conformance
suite: ``LLAMA_ROUTER_SEARCH=quick python -m pytest tests/test_search.py`` runs it too.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from conformance import live_program as lp
from conformance import search

pytestmark = [pytest.mark.live, pytest.mark.slow]
EASY = "Z20"  # duplicated headers: any proxied answer shows it
# The quick profile's generator with shorter programs, pauses and holds: the search and its
# shrinking as they are, at a cost a suite can pay (the quick profile's programs take seconds).
SMALL = search.Profile("small", 120.0, 20.0, 3, (0.3,), (1.0,))


@pytest.fixture(scope="module")
def found(tmp_path_factory: pytest.TempPathFactory) -> search.Result:
    db = tmp_path_factory.mktemp("search-db")
    # seed 2 draws a one-step program first (a seed makes the cost known; any finds Z20)
    result = search.search(search.setup(None, EASY, "fake"), SMALL, db=db,
                           say=lambda line: None, seed=2)
    return result


# The tests that read ``found`` run on one worker (the README's --dist loadgroup): one search.
ONE_SEARCH = pytest.mark.xdist_group("search-found")


@ONE_SEARCH
def test_the_search_finds_a_zoo_mutant_and_shrinks_it(found: search.Result) -> None:
    assert found.found, f"{EASY} not found in {found.examples} programs"
    assert found.program is not None and found.first is not None
    assert {f.check for f in found.failures} >= {"headers_once"}, found.failures
    assert search.size(found.program) <= search.size(found.first)
    if search.size(found.program)[0] == 1:  # one request: nothing fewer to shrink to
        assert found.shrink_runs == 0, found.shrink_runs


def test_the_same_seed_draws_the_same_programs(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``--seed``: two searches with one seed try the same programs, another seed others (the
    programs are recorded, not played: every one passes at once)."""
    tried: list[str] = []

    def record(program: lp.Program, *args: object) -> tuple[list[object], list[object], None]:
        tried.append(repr(program))
        return [], [], None

    monkeypatch.setattr(search.lp, "play", record)
    runs = []
    for n, seed in enumerate((5, 5, 6)):
        tried.clear()
        search.search(search.setup(None, None, "fake"), SMALL, budget=0.5, shrink_budget=0,
                      db=tmp_path / f"db{n}", say=lambda line: None, seed=seed)
        runs.append(list(tried))
    same = min(map(len, runs))
    assert same >= 10, [len(r) for r in runs]
    assert runs[0][:same] == runs[1][:same]
    assert runs[0][:same] != runs[2][:same]


@ONE_SEARCH
def test_the_reproduction_fails_on_the_mutant_and_passes_without_it(
        found: search.Result, tmp_path: Path) -> None:
    path = search.write_repro(found, tmp_path)
    failed, runs, out = search.reproduce(path, 1, timeout=240)
    assert (failed, runs) == (1, 1), out
    assert "expected no header twice" in out, out
    failed, runs, out = search.reproduce(path, 1, no_extra_env=True, timeout=240)
    assert (failed, runs) == (0, 1), out


@ONE_SEARCH
def test_a_reproduction_needs_only_httpx_and_the_standard_library(
        found: search.Result, tmp_path: Path) -> None:
    """Its top-level imports; the harness's invariants are imported only where it runs inside
    the harness's checkout (``observed_checks``), and are optional there."""
    tree = ast.parse(search.write_repro(found, tmp_path).read_text())
    names = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {(node.module or "").split(".")[0] for node in tree.body
              if isinstance(node, ast.ImportFrom)}
    assert names - {"httpx"} <= set(sys.stdlib_module_names), names


def test_a_short_search_of_the_correct_router_finds_nothing(tmp_path: Path) -> None:
    result = search.search(search.setup(None, None, "fake"), SMALL, budget=5,
                           shrink_budget=0, db=tmp_path / "db", say=lambda line: None)
    assert result.examples >= 1
    assert not result.found, f"{result.program}\n" + "\n".join(map(str, result.failures))


def test_a_program_reads_as_python() -> None:
    """The repr of a program is the Python that builds it (a reproduction embeds it)."""
    program = lp.Program((lp.Burst((lp.Chat("a"), lp.Chat("b", stream=True, leave=0.5)),
                                   stagger=0.05),
                          lp.Pause("a", 1.0), lp.Kill("b", "loading"), lp.Wait(0.3),
                          lp.Chat("a", hold=3.0), lp.Download(search.HUB_MODELS[0]),
                          lp.Reload()),
                         lp.World(models_max=2, fake_timing=True, loaded=("a",)))
    assert eval(repr(program), vars(lp)) == program
    assert program.needs_hub() and program.models() == {"a", "b", search.HUB_MODELS[0]}


def test_the_hub_environment_is_the_hubs_own() -> None:
    """A reproduction imports nothing of the harness, so live_program writes out what points a
    router at the hub: it must stay what ``fixtures.hub.LocalHub.env()`` says."""
    from fixtures.hub import LocalHub
    with LocalHub(default_repos=False) as hub:
        assert lp.hub_env(hub.url) == hub.env()


def test_the_generator_draws_every_kind_of_step_and_world() -> None:
    """Downloads and reloads come with the hub's model; holds, staggered bursts and worlds
    that start with a model loaded are drawn too (each is a condition of some zoo race)."""
    from hypothesis import HealthCheck, given, settings
    seen: set[str] = set()

    @settings(max_examples=300, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(search.programs(search.PROFILES["quick"]))
    def draw(program: lp.Program) -> None:
        kinds = {type(s).__name__ for s in program.steps}
        assert "Download" not in kinds or program.needs_hub(), program
        assert not set(program.world.loaded) & set(search.HUB_MODELS), program
        seen.update(kinds)
        chats = [c for s in program.steps for c in (s.chats if isinstance(s, lp.Burst) else (s,))
                 if isinstance(c, lp.Chat)]
        seen.update(f"hold {c.hold:g}" for c in chats if c.hold)
        seen.update(f"stagger {s.stagger:g}" for s in program.steps
                    if isinstance(s, lp.Burst) and s.stagger)
        if program.world.loaded:
            seen.add("loaded")

    draw()
    assert seen >= {"Chat", "Burst", "Get", "Load", "Unload", "Pause", "Kill", "Wait",
                    "Download", "Reload", "loaded", f"hold {search.PAST_DRAIN:g}",
                    "stagger 0.05"}, seen


def history(*entries: tuple[float, str, dict[str, object]]) -> lp.History:
    h = lp.History()
    for t, kind, data in entries:
        h.note(kind, t=t, **data)
    return h


def test_a_request_sent_once_its_models_unload_was_answered_must_not_fail() -> None:
    """An unload excuses the requests it may have cut (sent before its answer), not those that
    came after: they wait for the model's next child (ROUTER.md section 6; Z9)."""
    program = lp.Program((lp.Chat("a"), lp.Unload("a"), lp.Chat("a")), lp.World())
    failed = [(0.10, "send", {"req": 1, "model": "a"}),
              (0.20, "unload-answer", {"model": "a", "status": 200, "asked": 0.15,
                                       "before": "loaded", "answered": "loaded"}),
              (0.21, "answer", {"req": 1, "model": "a", "status": 502}),
              (0.21, "error", {"req": 1, "model": "a", "status": 502, "text": "cut"})]
    assert [f.check for f in lp.check(program, history(*failed))] == []
    after = [(0.25, "send", {"req": 2, "model": "a"}),
             (2.30, "answer", {"req": 2, "model": "a", "status": 502}),
             (2.30, "error", {"req": 2, "model": "a", "status": 502, "text": "child gone"})]
    assert [f.check for f in lp.check(program, history(*failed, *after))] == ["no_error"]


def test_a_hub_model_may_be_unknown_until_its_download_is_accepted() -> None:
    hub = search.HUB_MODELS[0]
    program = lp.Program((lp.Chat(hub), lp.Download(hub), lp.Chat(hub), lp.Reload()))
    entries = [(0.1, "send", {"req": 1, "model": hub}),
               (0.2, "answer", {"req": 1, "model": hub, "status": 404}),
               (0.2, "error", {"req": 1, "model": hub, "status": 404, "text": "not found"}),
               (0.3, "download-answer", {"model": hub, "status": 200, "asked": 0.25,
                                         "text": ""}),
               (0.4, "send", {"req": 2, "model": hub}),
               (0.5, "answer", {"req": 2, "model": hub, "status": 503}),
               (0.5, "error", {"req": 2, "model": hub, "status": 503, "text": "no"}),
               (3.0, "reload-answer", {"asked": 2.0, "status": None, "text": "no answer"})]
    assert [f.check for f in lp.check(program, history(*entries))] == [
        "no_error", "reload_answered"]


@pytest.mark.timeout(600)
@pytest.mark.skipif(os.environ.get("LLAMA_ROUTER_SEARCH") != "quick",
                    reason="the quick profile's whole search: set LLAMA_ROUTER_SEARCH=quick")
def test_the_quick_profile_finds_nothing_on_the_reference_router(tmp_path: Path) -> None:
    result = search.search(search.setup(None, None, "fake"), search.PROFILES["quick"],
                           db=tmp_path / "db")
    assert not result.found, f"{result.program}\n" + "\n".join(map(str, result.failures))


def test_a_load_asked_while_its_model_stops_is_for_the_next_child() -> None:
    """Finding S2 (docs/CONFORMANCE.md): a load asked while the test's unload of the model is
    under way demands the child after it, not the one being stopped."""
    h = lp.History()
    for t, kind, data in [
            (0.0, "send", {"req": 1, "model": "b"}),
            (0.1, "sse", {"model": "b", "data": {"status": "loading"}}),
            (0.2, "unload", {"model": "b"}),
            (0.3, "load", {"model": "b"}),
            (0.4, "left", {"req": 1, "model": "b", "answered": False}),
            (1.4, "gone", {"req": 1}),
            (2.0, "sse", {"model": "b", "data": {"status": "unloaded", "exit_code": -9,
                                                 "failed": False}}),
            (2.0, "sse", {"model": "b", "data": {"status": "loading"}}),
            (2.5, "sse", {"model": "b", "data": {"status": "loaded"}})]:
        h.note(kind, t=t, **data)
    program = lp.Program((lp.Chat("b", leave=0.05), lp.Unload("b"), lp.Load("b")),
                         lp.World(models_max=0))
    assert lp.observed_checks(program, h) == []


def test_a_model_whose_waiters_all_left_may_be_evicted_before_the_grace_ends() -> None:
    """Finding S8 (docs/CONFORMANCE.md): the router noticed the client leave 0.86 s after it
    did, within the observer's grace, and evicted the model loaded for it."""
    h = lp.History()
    for t, kind, data in [
            (0.24, "send", {"req": 1, "model": "c"}),
            (0.244, "send", {"req": 3, "model": "a"}),
            (0.592, "sse", {"model": "c", "data": {"status": "loading"}}),
            (0.677, "crash", {"model": "c"}),
            (0.693, "sse", {"model": "c", "data": {"status": "unloaded", "exit_code": -9,
                                                   "failed": True}}),
            (0.717, "sse", {"model": "a", "data": {"status": "loading"}}),
            (1.22, "left", {"req": 3, "model": "a", "answered": False}),
            (1.477, "sse", {"model": "a", "data": {"status": "loaded"}}),
            (2.083, "sse", {"model": "a", "data": {"status": "unloaded", "exit_code": 0,
                                                   "failed": False}}),
            (2.109, "sse", {"model": "c", "data": {"status": "loading"}}),
            (2.22, "gone", {"req": 3}),
            (2.801, "sse", {"model": "c", "data": {"status": "loaded"}}),
            (2.814, "answer", {"req": 1, "model": "c", "status": 200}),
            (2.814, "end", {"req": 1, "ok": True})]:
        h.note(kind, t=t, **data)
    program = lp.Program((lp.Get("c"), lp.Kill("c", "loading"), lp.Chat("a", leave=0.5)),
                         lp.World(models_max=1))
    assert lp.observed_checks(program, h) == []


def test_a_model_whose_client_left_may_be_evicted_while_it_is_busy_to_the_observer() -> None:
    """Finding S8 again, seen in the suite on a busy machine: ``a`` was answering when its client
    left, and the router, having seen the client go, evicted it 0.5 s later for ``c``'s waiting
    request, within the observer's grace. An eviction after the client left is not of a busy
    model: busy_never_evicted, like no_thrash, reads the departure at once; an eviction before it
    is still one."""
    def played(evicted: float) -> lp.History:
        h = lp.History()
        for t, kind, data in [
                (0.0, "send", {"req": 1, "model": "c"}),
                (0.01, "send", {"req": 3, "model": "a"}),
                (0.02, "sse", {"model": "a", "data": {"status": "loading"}}),
                (0.35, "sse", {"model": "a", "data": {"status": "loaded"}}),
                (0.4, "answer", {"req": 3, "model": "a", "status": 200}),  # its head, no end
                (0.6, "left", {"req": 3, "model": "a", "answered": True}),
                (1.6, "gone", {"req": 3}),
                (evicted, "sse", {"model": "a", "data": {"status": "unloaded", "exit_code": 0,
                                                         "failed": False}}),
                (evicted + 0.02, "sse", {"model": "c", "data": {"status": "loading"}}),
                (evicted + 0.3, "sse", {"model": "c", "data": {"status": "loaded"}}),
                (evicted + 0.31, "answer", {"req": 1, "model": "c", "status": 200}),
                (evicted + 0.31, "end", {"req": 1, "ok": True})]:
            h.note(kind, t=t, **data)
        return h

    program = lp.Program((lp.Get("c"), lp.Chat("a", leave=0.5)), lp.World(models_max=1))
    assert lp.observed_checks(program, played(1.1)) == []
    assert "observed.busy_never_evicted" in [f.check for f in lp.observed_checks(program,
                                                                            played(0.5))]


def test_a_download_asked_again_after_a_cancelled_one_is_a_fresh_entry() -> None:
    """Found by the Z19 measurement (docs/CONFORMANCE.md, S9): a download cancelled by an
    unload removes its entry (``model_remove``), so the next download of the name starts a
    fresh one: ``unloaded -> downloading`` across a removal is legal. The history kept status
    events only, and the observer called it an illegal transition."""
    hub = search.HUB_MODELS[0]
    h = history((0.1, "sse", {"model": hub, "data": {"status": "downloading"}}),
                (0.3, "unload", {"model": hub}),
                (0.4, "sse", {"model": hub, "data": {"status": "unloaded"}}),
                (0.4, "remove", {"model": hub}),
                (0.6, "sse", {"model": hub, "data": {"status": "downloading"}}),
                (1.6, "sse", {"model": hub, "data": {"status": "downloaded"}}),
                (1.7, "sse", {"model": hub, "data": {"status": "unloaded"}}))
    program = lp.Program((lp.Download(hub), lp.Unload(hub), lp.Download(hub)))
    assert lp.observed_checks(program, h) == []
    without = lp.History()
    without.entries = [e for e in h.entries if e[2] != "remove"]
    assert [f.check for f in lp.observed_checks(program, without)] == [
        "observed.legal_transitions"]


def test_a_child_is_known_for_a_download_child_only_once_it_has_its_own_command_line() -> None:
    """Found by the 15-minute search (docs/CONFORMANCE.md, S10): a download child read while
    forked (the router's command line) or in the middle of its exec (an empty one) was taken
    for a model child for good, and counted against --models-max 1 beside the model's child."""
    router = ["python", "-m", "refimpl", "--port", "1"]
    download = {"LLAMA_SERVER_CHILD_MODE": "download", "LLAMA_ARG_HF_REPO": "u/r:F16"}
    assert lp.takes_no_slot(router, {"PATH": "/bin"}, router) is None
    assert lp.takes_no_slot([""], {}, router) is None
    assert lp.takes_no_slot(["python", "-m", "refimpl.child"], {}, router) is None
    assert lp.takes_no_slot(["python", "-m", "refimpl.child"], download, router) is True
    assert lp.takes_no_slot(["python", "-m", "fixtures.fake_child"], {"PATH": "/bin"},
                            router) is False
