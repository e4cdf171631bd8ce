"""The bug zoo's core-level rows as scripted regression scenarios.

Each scenario replays the trigger of one real bug (``shared/spec/BUGZOO.md``) and names the
guarantees that catch it. On the correct core every guarantee holds; with the row's mutant
applied (``properties/mutants``), at least one of the named guarantees fails.
``tests/test_bugzoo.py`` checks both directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable

from refimpl import __file__ as refimpl_init
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.protocol import STATE_PREFIX
from simulator.scenario import Action, Crash, Download, Hang, Request, Unload, Write, play

from .invariants import CHECKS, Violation, check_all
from .mutants import mutated

REFIMPL = str(Path(refimpl_init).resolve().parent)


def router_crashed(exc: BaseException) -> bool:
    """The exception is the router's own crash: raised by refimpl code while
    ``RouterCore.handle`` ran. An exception of the simulator or of the properties (a harness
    bug) is not, and neither is one the core merely passed through."""
    frames: list[tuple[str, str]] = []
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_filename, code.co_qualname))
        tb = tb.tb_next
    if not frames or not frames[-1][0].startswith(REFIMPL):
        return False
    return any(name == "RouterCore.handle" and path.startswith(REFIMPL)
               for path, name in frames)


def models(*names: str, stop_timeout: float = 5.0, **extra: object) -> tuple[ModelSpec, ...]:
    return tuple(ModelSpec(n, stop_timeout=stop_timeout, **extra) for n in names)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Scenario:
    zid: str
    title: str
    config: RouterConfig
    script: tuple[tuple[float, Action], ...]
    catches: tuple[str, ...]  # the guarantees that must fail when the mutant is on
    until: float = 300.0

    def violations(self, mutants: Iterable[str] = ()) -> list[Violation]:
        """Every guarantee on the scenario's trace, with ``mutants`` applied. The router's own
        crash counts as a violation (``router_survives``: what Z14 looks like); any other
        exception is a bug of the harness and propagates."""
        with mutated(*mutants):
            try:
                trace = play(self.config, list(self.script), until=self.until)
            except Exception as exc:
                if not router_crashed(exc):
                    raise
                return [Violation("router_survives", 0.0, f"{type(exc).__name__}: {exc}")]
            return check_all(trace, self.config)

    def caught(self, mutants: Iterable[str]) -> list[Violation]:
        """The violations, among the guarantees this scenario is about, with ``mutants`` on."""
        names = set(self.catches) | {"router_survives"}
        return [v for v in self.violations(mutants) if v.guarantee in names]


A, B, C = "A", "B", "C"
ONE: dict[str, Any] = dict(models_max=1)
LONG = 60.0

SCENARIOS: dict[str, Scenario] = {s.zid: s for s in [
    Scenario("Z1", "A/B thrash: A and B don't fit together, both have requests",
             RouterConfig(models(A, B), **ONE),
             tuple((0.1 * i, Request(A if i % 2 == 0 else B, 2.0)) for i in range(6)),
             ("no_thrash", "every_request_answered")),
    Scenario("Z2", "request to A killed mid-generation by a request for B",
             RouterConfig(models(A, B), **ONE),
             ((0.0, Request(A, LONG)), (2.0, Request(B, 0.5))),
             ("busy_never_evicted",)),
    Scenario("Z3", "concurrent requests for two unloaded models exceed models_max",
             RouterConfig(models(A, B), **ONE),
             ((0.0, Request(A)), (0.0, Request(B))),
             ("limits_held",)),
    Scenario("Z4", "a new child spawned before the evicted one has exited",
             RouterConfig(models(A, B), **ONE),
             ((0.0, Request(A)), (5.0, Request(B))),
             ("limits_held",)),
    Scenario("Z5", "a child killed while loading leaves the model LOADING forever",
             RouterConfig(models(A, B), **ONE),
             ((0.0, Request(A)), (0.5, Crash(A, 137)), (5.0, Request(A))),
             ("exit_reaches_unloaded", "every_request_answered")),
    Scenario("Z6", "unloading a LOADING model waits the whole stop timeout",
             RouterConfig(models(A, B, stop_timeout=10.0), **ONE),
             ((0.0, Request(A)), (0.5, Unload(A))),
             ("loading_stops",)),
    Scenario("Z7", "A idle; B and C requested together: one of them never loads",
             RouterConfig(models(A, B, C), **ONE),
             ((0.0, Request(A)), (5.0, Request(B)), (5.0, Request(C))),
             ("every_request_answered",)),
    Scenario("Z8", "cold router: A, then B 100 ms later; A evicted before serving",
             RouterConfig(models(A, B), **ONE),
             ((0.0, Request(A)), (0.1, Request(B))),
             ("no_thrash", "loading_stops")),
    Scenario("Z9", "A idle; request B; request A 50 ms later goes to the dying child",
             RouterConfig(models(A, B), **ONE),
             ((0.0, Request(A)), (5.0, Request(B)), (5.05, Request(A))),
             ("never_forward_to_stopping",)),
    Scenario("Z10", "3 concurrent cold requests, models_max 1: 'model limit reached'",
             RouterConfig(models(A, B, C), **ONE),
             ((0.0, Request(A)), (0.0, Request(B)), (0.0, Request(C))),
             ("errors_have_causes",)),
    Scenario("Z14", "a child sends an unknown state",
             RouterConfig(models(A), **ONE),
             ((0.0, Request(A, 5.0)),
              (2.0, Write(A, STATE_PREFIX + b'{"state": "exploding", "payload": {}}\n')),
              (3.0, Request(A))),
             ("router_survives",)),
    Scenario("Z15", "a download finishes while a request waits for it; then it is asked again",
             RouterConfig(models(A), **ONE),
             ((0.0, Request(A, 0.5)), (0.0, Download("user/D:F16")),
              (0.5, Request("user/D:F16")), (20.0, Request("user/D:F16"))),
             ("download_ends_clean", "every_request_answered")),
    Scenario("Z17", "models_max 0 with a load-on-startup model",
             RouterConfig(models(A, B, load_on_startup=True), models_max=0),
             ((1.0, Request(A)), (1.0, Request(B))),
             ("every_request_answered",)),
    Scenario("Z18", "an unload the router asked for is reported as failed",
             RouterConfig(models(A, B), **ONE),
             ((0.0, Request(A)), (3.0, Hang(A)), (4.0, Unload(A))),
             ("stop_not_failed",)),
    Scenario("Z19", "every running model busy for longer than the drain timeout",
             RouterConfig(models(A, B), models_max=1, drain_timeout=10.0),
             ((0.0, Request(A, LONG)), (2.0, Request(B))),
             ("busy_never_evicted",)),
]}

assert all(name in CHECKS or name == "router_survives"
           for s in SCENARIOS.values() for name in s.catches)
