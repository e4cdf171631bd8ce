"""Events: everything the router core is told. Each ``repr`` is valid Python."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True, slots=True)
class RouterStarted:
    """The router is up: models marked load-on-startup are queued."""


@dataclass(frozen=True, slots=True)
class RequestArrived:
    """A proxied request for ``model`` (``None``: the request named no model).

    ``autoload`` is the request's ``?autoload=`` (``None``: the router's default).
    """

    req: int
    model: str | None
    autoload: bool | None = None


@dataclass(frozen=True, slots=True)
class ClientGone:
    """The client of ``req`` disconnected before its response ended."""

    req: int


@dataclass(frozen=True, slots=True)
class ResponseEnded:
    """The proxied response of ``req`` ended; ``ok`` is false when the child failed it."""

    req: int
    ok: bool = True


@dataclass(frozen=True, slots=True)
class LoadAsked:
    """``POST /models/load``; answered with a ``Reply`` to ``req``."""

    req: int
    model: str | None


@dataclass(frozen=True, slots=True)
class UnloadAsked:
    """``POST /models/unload``; answered with a ``Reply`` to ``req``."""

    req: int
    model: str | None


@dataclass(frozen=True, slots=True)
class ChildOutput:
    """Bytes read from a child's stdout, in whatever chunks the pipe gave them."""

    instance: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A child process ended with ``code`` (negative: killed by that signal)."""

    instance: int
    code: int


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The time the core asked for with ``next_timer()`` has come."""


Event = Union[RouterStarted, RequestArrived, ClientGone, ResponseEnded, LoadAsked, UnloadAsked,
              ChildOutput, ChildExited, TimerFired]

EVENT_TYPES: tuple[type, ...] = (RouterStarted, RequestArrived, ClientGone, ResponseEnded,
                                 LoadAsked, UnloadAsked, ChildOutput, ChildExited, TimerFired)
