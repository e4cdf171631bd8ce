"""Scripted scenarios: a list of timed actions played against the core with simulated children.

A script is what a bug report describes ("A idle; request B; request A 50 ms later"). Load and exit
times are fixed, so the same script always gives the same trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from refimpl.core.config import RouterConfig
from refimpl.core.events import DownloadAsked, LoadAsked, RemoveAsked, UnloadAsked
from refimpl.core.trace import At

from .engine import Simulation
from .faults import Faults

STEADY = Faults(load_time=(1.0, 1.0), exit_time=(0.1, 0.1), wake_time=(0.1, 0.1))


@dataclass(frozen=True, slots=True)
class Request:
    model: str
    service: float = 0.5
    patience: float | None = None
    autoload: bool | None = None


@dataclass(frozen=True, slots=True)
class Load:
    model: str


@dataclass(frozen=True, slots=True)
class Unload:
    model: str


@dataclass(frozen=True, slots=True)
class Crash:
    model: str
    code: int = 137


@dataclass(frozen=True, slots=True)
class Write:
    """The model's child writes raw bytes on its stdout."""

    model: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Hang:
    """The model's child will ignore the exit command."""

    model: str


@dataclass(frozen=True, slots=True)
class Download:
    """``POST /models``: download ``model`` into the cache."""

    model: str


@dataclass(frozen=True, slots=True)
class Remove:
    """``DELETE /models?model=``."""

    model: str


Action = Request | Load | Unload | Download | Remove | Crash | Write | Hang


def play(config: RouterConfig, script: list[tuple[float, Action]], *, faults: Faults = STEADY,
         until: float = 300.0, seed: int = 0) -> list[At]:
    """Play ``script`` (``(time, action)`` pairs) and run on to ``until``; return the trace."""
    sim = Simulation(config, None, faults, random.Random(seed), duration=0.0, drain=until)
    sim.start()
    for t, action in sorted(script, key=lambda pair: pair[0]):
        sim.run_until(t)
        do(sim, action)
    sim.run_until(until)
    assert sim.trace is not None
    return sim.trace


def do(sim: Simulation, action: Action) -> None:
    if isinstance(action, Request):
        sim.request(action.model, action.service, action.patience, action.autoload)
    elif isinstance(action, Load):
        sim.api(LoadAsked, action.model)
    elif isinstance(action, Unload):
        sim.api(UnloadAsked, action.model)
    elif isinstance(action, Download):
        sim.api(DownloadAsked, action.model)
    elif isinstance(action, Remove):
        sim.api(RemoveAsked, action.model)
    elif isinstance(action, Crash):
        sim.crash(action.model, action.code)
    else:
        child = sim.child_of(action.model)
        if child is None:
            return
        if isinstance(action, Write):
            child.write_raw_now(action.data)
        else:
            child.hangs = True
