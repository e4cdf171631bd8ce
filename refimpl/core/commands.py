"""Commands: everything the router core asks its driver to do. Each ``repr`` is valid Python."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Union

from .config import Card


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a child process for ``model``; later events name it by ``instance``.

    ``download``: a download child (``LLAMA_SERVER_CHILD_MODE=download``), which fetches the
    model into the cache and exits; it never counts against the limits. ``card``: what the
    model's source says to start (its spec's card when the spawn was decided)."""

    instance: int
    model: str
    download: bool = False
    card: Card = Card()

    def __repr__(self) -> str:
        card = f", card={self.card!r}" if self.card != Card() else ""
        return (f"Spawn(instance={self.instance!r}, model={self.model!r}, "
                f"download={self.download!r}{card})")


@dataclass(frozen=True, slots=True)
class SendExit:
    """Write the exit command to the child's stdin (graceful stop). ``expired``: the model was
    idle for its TTL (an unload the router asked for, not an eviction); ``group``: the model
    whose load it makes way for, being outside that model's group (ROUTER.md 7). The driver
    does the same either way; the trace says why."""

    instance: int
    expired: bool = False
    group: str | None = None

    def __repr__(self) -> str:
        expired = ", expired=True" if self.expired else ""
        group = f", group={self.group!r}" if self.group is not None else ""
        return f"SendExit(instance={self.instance!r}{expired}{group})"


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
    """Answer ``req`` directly. ``kind`` names the reason (see ``core.errors``).
    ``retry_after``: seconds the client should wait before it tries again (a 429), if any."""

    req: int
    status: int
    kind: str
    message: str = ""
    retry_after: int | None = None

    def __repr__(self) -> str:
        retry = f", retry_after={self.retry_after!r}" if self.retry_after is not None else ""
        return (f"Reply(req={self.req!r}, status={self.status!r}, kind={self.kind!r}, "
                f"message={self.message!r}{retry})")


@dataclass(frozen=True, slots=True)
class Publish:
    """Send an event to ``/models/sse`` subscribers."""

    model: str
    event: str
    data: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Publish(model={self.model!r}, event={self.event!r}, data={self.data!r})"


@dataclass(frozen=True, slots=True)
class ModelView:
    """One model as ``GET /models`` shows it: its names, its state and its card, and the
    policies it runs under (``ttl`` in seconds, 0: none; ``concurrency`` 0: no limit)."""

    name: str
    aliases: tuple[str, ...]
    status: str
    card: Card = Card()
    failed: bool = False
    exit_code: int | None = None  # after a failed exit, until the next load
    info: Mapping[str, Any] = field(default_factory=dict)  # the child's own entry, once loaded
    ttl: float = 0.0
    pinned: bool = False
    concurrency: int = 0
    group: str | None = None  # its group's name, if it has one

    def __post_init__(self) -> None:
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))

    def __reduce__(self) -> tuple[Any, ...]:  # traces are pickled (--trace)
        return (ModelView, (self.name, self.aliases, self.status, self.card, self.failed,
                            self.exit_code, dict(self.info), self.ttl, self.pinned,
                            self.concurrency, self.group))

    def __repr__(self) -> str:
        policies = "".join(f", {name}={value!r}" for name, value in (
            ("ttl", self.ttl), ("pinned", self.pinned), ("concurrency", self.concurrency),
            ("group", self.group)) if value)
        return (f"ModelView(name={self.name!r}, aliases={self.aliases!r}, "
                f"status={self.status!r}, card={self.card!r}, failed={self.failed!r}, "
                f"exit_code={self.exit_code!r}, info={dict(self.info)!r}{policies})")


@dataclass(frozen=True, slots=True)
class Listed:
    """The answer to ``ListAsked`` ``req``: every model a request can name, or that still has a
    child, in catalog order (hidden ones included, marked by their card)."""

    req: int
    models: tuple[ModelView, ...]


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


Command = Union[Spawn, SendExit, Kill, Forward, Reply, Publish, Listed, RemoveFiles, Log]
