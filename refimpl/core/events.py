"""Events: everything the router core is told. Each ``repr`` is valid Python."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .config import ModelSpec


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
class ListAsked:
    """``GET /models``: answered with ``Listed`` to ``req``. Changes nothing."""

    req: int


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
class DownloadAsked:
    """``POST /models``: download ``model`` (``user/repo:tag``, checked against the hub by the
    driver) in a download child. Answered with a ``Reply`` to ``req`` at once."""

    req: int
    model: str


@dataclass(frozen=True, slots=True)
class RemoveAsked:
    """``DELETE /models?model=``: stop the model's child or download if any, then remove its files
    (the driver checked that it is a cache model). Answered once nothing runs for it any more."""

    req: int
    model: str


@dataclass(frozen=True, slots=True)
class CatalogChanged:
    """The model sources say something new (``GET /models?reload=1``, or a finished download's
    spec with its memory estimate): each of ``specs`` is added or replaces the known model's spec,
    and the models named in ``removed`` vanished. A running model whose ``launch`` changed, or that
    vanished, is unloaded; other changes take effect at its next load. A name or alias that would
    belong to two models refuses the whole change (nothing changes; 400 to ``req`` when given).
    ``req``: the API call to answer, ``None`` for a change nobody asked for. ``reload``: the
    sources were read whole (``GET /models?reload=1``): every known model not in ``specs`` (and
    not downloading) vanished too, and ``models_reload`` is published when the change is made."""

    specs: tuple[ModelSpec, ...]
    removed: tuple[str, ...] = ()
    req: int | None = None
    reload: bool = False


@dataclass(frozen=True, slots=True)
class ChildOutput:
    """Bytes read from a child's stdout, in whatever chunks the pipe gave them."""

    instance: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChildStarted:
    """The process of child ``instance`` runs and serves HTTP at ``address`` (``host:port``).
    It comes before any of that child's output."""

    instance: int
    address: str


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A child process ended with ``code`` (negative: killed by that signal)."""

    instance: int
    code: int


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The time the core asked for with ``next_timer()`` has come."""


Event = Union[RouterStarted, RequestArrived, ClientGone, ResponseEnded, ListAsked, LoadAsked,
              UnloadAsked,
              DownloadAsked, RemoveAsked, CatalogChanged, ChildStarted, ChildOutput, ChildExited,
              TimerFired]

EVENT_TYPES: tuple[type, ...] = (RouterStarted, RequestArrived, ClientGone, ResponseEnded,
                                 ListAsked, LoadAsked, UnloadAsked, DownloadAsked, RemoveAsked,
                                 CatalogChanged, ChildStarted, ChildOutput, ChildExited,
                                 TimerFired)
