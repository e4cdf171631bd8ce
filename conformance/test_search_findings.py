"""The live search's classified findings (``conformance/search.py``; docs/CONFORMANCE.md, "Live
search"), each its shrunk program replayed against the router it was found on, with the file's
checks and ``properties/observed.py``'s.

A finding that is the router's bug (upstream, or a gap in the spec) runs as a strict xfail on
that router: the day it stops failing, the run says so. A finding that was a bug of the checker
(fixed since) must pass there. The router is the suite's target (``--router-bin PATH`` for
llama-server), so the llama-server findings run only in the llama-server column, like the rest of
it; the reproduction files in ``conformance/repros/`` replay the same programs without pytest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from . import live_program as lp
from . import search
from .live_program import (
    Burst,
    Chat,
    Get,
    Kill,
    Load,
    Pause,
    Program,
    Unload,
    Wait,
    World,
)
from .process import CHECKOUT
from .routers import Target

pytestmark = [pytest.mark.live, pytest.mark.slow]


@dataclass(frozen=True)
class Finding:
    id: str
    router: str  # the report column it was found in (Target.name)
    program: Program
    check: str  # the check that failed
    summary: str  # its classification
    router_bug: bool  # True: a strict xfail there; False: the checker's bug, fixed: it passes
    # a checker bug: runs that must all pass; a router bug (a race, most of them) is tried until
    # it fails, at least RACE_TRIES times (S1 fails 9 runs of 10: three tries missed it once, on a
    # busy machine)
    runs: int = 3
    repro: str = ""  # conformance/repros/<file>

    @property
    def reason(self) -> str:
        return f"live search finding {self.id} (docs/CONFORMANCE.md): {self.summary}"


RACE_TRIES = 8

FINDINGS = [
    Finding(
        "S1", "llama-server",
        Program((Wait(0.05), Load("hang-on-exit"),
                 Burst((Chat("a", stream=True, tokens=16), Chat("unknown-state", stream=True),
                        Chat("hang-on-exit", stream=True, leave=0.5),
                        Chat("hang-on-exit", stream=True))),
                 Wait(1.0)),
                World(models_max=2, fake_timing=True)),
        "no_error",
        "upstream #28698: a model that has just loaded is evicted (51 ms after 'loaded') for "
        "the next queued model before the requests waiting for it count themselves; they get "
        "400 'model name=... is not running' (no_thrash too)",
        router_bug=True, repro="llama-server-no_error-20261201-191449.py"),
    Finding(
        "S4", "llama-server",
        Program((Wait(0.05), Chat("c", tokens=16), Load("b"),
                 Burst((Chat("c", stream=True, tokens=16), Chat("b", stream=True, tokens=16),
                        Chat("a", leave=0.05))),
                 Burst((Chat("b", leave=0.05), Chat("b", tokens=16), Chat("a", tokens=16))),
                 Kill("c", "loading")),
                World(models_max=1)),
        "no_error",
        "upstream #28698, without the debug hook: a model just loaded for waiting requests is "
        "evicted before they count themselves; they get 400 'model name=b is not running', or "
        "the model is loaded a second time for them (no_thrash)",
        router_bug=True, runs=10, repro="llama-server-no_error-20261201-192724.py"),
    Finding(
        "S6", "llama-server",
        Program((Load("a"), Chat("unknown-state"), Get("a", "/slots", ""),
                 Chat("unknown-state", stream=True)),
                World(models_max=1)),
        "no_error",
        "upstream #28698 (S1, S4), its smallest form: a loaded through the API, a GET for it "
        "waits while it loads, a request for another model evicts a before the GET counts "
        "itself; the GET gets 400 'model name=a is not running'",
        router_bug=True, runs=8, repro="llama-server-no_error-no_thrash-20261201-193924.py"),
    Finding(
        "S7", "llama-server",
        Program((Load("c"), Load("b"), Pause("c", 3.0), Load("c"), Get("b", "/props", "foo=1"),
                 Get("c", "/slots", "foo=1")),
                World(models_max=1)),
        "no_error",
        "upstream #28698: llama-server evicts LOADING models for an asked load ('evicting idle "
        "LRU' of a model that is loading), and evicts c for b's queued request just before c's "
        "own request joins the queue; c's request gets 500 'model name=c failed to load' or "
        "400 'model name=c is not running'",
        router_bug=True, runs=3, repro="llama-server-no_error-20261201-194306.py"),
    Finding(
        "S5", "llama-server",
        Program((Chat("c", tokens=16), Wait(0.3), Load("b")),
                World(models_max=1, fake_timing=True)),
        "load_answered",
        "upstream, #28774's 500 'model limit reached, try again later' on POST /models/load: "
        "with the only slot held by a loading or busy model, an asked load is refused with 500 "
        "instead of queued (ROUTER.md: 200 unless unknown or already running)",
        router_bug=True, runs=3, repro="llama-server-load_answered-20261201-193859.py"),
    Finding(
        "S2", "refimpl",
        Program((Unload("a"), Load("a"),
                 Burst((Chat("a"), Chat("a", stream=True), Chat("b", tokens=16, leave=0.05))),
                 Kill("a", "now"), Unload("b"), Load("b")),
                World(models_max=0, fake_timing=True)),
        "observed.coalesced",
        "the checker's: a load asked while the test's unload of the model was under way was "
        "given to the child being stopped, so the next child looked unasked for "
        "(properties/observed.py now gives it to the next child)",
        router_bug=False, runs=1, repro="refimpl-coalesced-20261201-191757.py"),
    Finding(
        "S3", "llama-server",
        Program((Pause("slow-load", 0.3),
                 Burst((Chat("c", stream=True, tokens=16), Chat("unknown-state", leave=0.05),
                        Chat("unknown-state", stream=True, tokens=16),
                        Chat("slow-load", tokens=16, leave=0.5)))),
                World(models_max=1, fake_timing=True)),
        "observed.coalesced",
        "the checker's: under LLAMA_SERVER_DEBUG_FAKE_TIMING upstream publishes 'loading' 2 s "
        "after it decided the load, so a load decided for a waiting client showed after the "
        "client had left (a client now counts as gone 2 s later under that hook)",
        router_bug=False, runs=1, repro="llama-server-coalesced-20261201-192015.py"),
    Finding(
        "S8", "refimpl",
        Program((Get("c", "/slots", ""), Chat("c", stream=True, leave=0.05), Kill("c", "loading"),
                 Chat("a", leave=0.5), Load("a"), Pause("c", 3.0)),
                World(models_max=1)),
        "observed.no_thrash",
        "the checker's: the router saw a client leave within the 1 s grace the observer gave "
        "it and evicted the model loaded for it; no_thrash now counts a departure from the "
        "moment the client left, and so does busy_never_evicted (the other checks, from the end "
        "of the grace)",
        router_bug=False, runs=1, repro="refimpl-no_thrash-20261201-193955.py"),
]


@pytest.mark.parametrize("finding", FINDINGS, ids=[f.id for f in FINDINGS])
def test_a_live_search_finding_replays_as_classified(finding: Finding, target: Target,
                                                     request: pytest.FixtureRequest,
                                                     tmp_path: Path) -> None:
    """A program the live search found and shrank fails on its router as classified (a
    router's bug: strict xfail), or passes once the checker that misjudged it was fixed."""
    if target.name != finding.router or target.child_cmd:
        pytest.skip(f"found on {finding.router}; this run checks {target.name}")
    if finding.router_bug:
        request.applymarker(pytest.mark.xfail(strict=True, reason=finding.reason))
    s = search.setup(target.binary, None, "fake")
    for i in range(max(finding.runs, RACE_TRIES) if finding.router_bug else finding.runs):
        _, failures, _ = lp.play(finding.program, s.base, s.models_dir,
                                 tmp_path / f"router-{i}.log", s.env)
        if failures and finding.router_bug:
            break
        assert not failures, f"run {i + 1}: " + "; ".join(map(str, failures))
    assert not failures, "; ".join(map(str, failures))


@pytest.mark.skipif(not CHECKOUT, reason="the reproduction files are the checkout's "
                    "(conformance/repros/), not the installed package's")
def test_each_finding_names_its_reproduction() -> None:
    for f in FINDINGS:
        assert (search.REPROS / f.repro).is_file(), f.repro
