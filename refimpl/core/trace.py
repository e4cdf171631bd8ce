"""A trace: what a router was told and what it did, in order, with the time of each.

Each entry pairs a time with an event or a command; commands follow the event that caused them.
The simulator, the stateful tests and the live router record the same shape, so the invariant
functions in ``properties/`` read any of them. ``repr`` of an entry is valid Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

from .commands import Command
from .events import Event

Item = Union[Event, Command]


@dataclass(frozen=True, slots=True)
class At:
    t: float
    what: Item


def format_trace(trace: Iterable[At]) -> str:
    """One line per entry; the same trace always gives the same bytes."""
    return "".join(f"{entry!r}\n" for entry in trace)
