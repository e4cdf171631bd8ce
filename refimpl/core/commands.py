"""Commands: everything the router core asks its driver to do. Each ``repr`` is valid Python."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a child process for ``model``; later events name it by ``instance``.

    ``download``: a download child (``LLAMA_SERVER_CHILD_MODE=download``), which fetches the
    model into the cache and exits; it never counts against the limits."""

    instance: int
    model: str
    download: bool = False


@dataclass(frozen=True, slots=True)
class SendExit:
    """Write the exit command to the child's stdin (graceful stop)."""

    instance: int


@dataclass(frozen=True, slots=True)
class Kill:
    """Force-kill the child (it is still LOADING, or ignored the exit command)."""

    instance: int


@dataclass(frozen=True, slots=True)
class Forward:
    """Proxy request ``req`` to the child ``instance`` of ``model``, which serves at
    ``address`` (``host:port``, from ``ChildStarted``; None only for a core driven by hand that
    was never told)."""

    req: int
    model: str
    instance: int
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer ``req`` directly. ``kind`` names the reason (see ``core.errors``)."""

    req: int
    status: int
    kind: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Publish:
    """Send an event to ``/models/sse`` subscribers."""

    model: str
    event: str
    data: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Publish(model={self.model!r}, event={self.event!r}, data={self.data!r})"


@dataclass(frozen=True, slots=True)
class RemoveFiles:
    """Delete the cache files of ``model`` (after ``DELETE /models``, or what a failed or
    cancelled download left behind). Nothing of the model runs any more when this is sent."""

    model: str


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the router's log: child output (prefixed by the driver) or a rejection."""

    instance: int
    text: str


Command = Union[Spawn, SendExit, Kill, Forward, Reply, Publish, RemoveFiles, Log]
