"""What the core keeps per model, child and request: plain data that the router core
(``router.py``) changes and the scheduler (``scheduler.py``) reads."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import ModelSpec
from .lifecycle import Status
from .protocol import LineReader


@dataclass(slots=True)
class Instance:
    """One child process. It counts against the limits from spawn until it has exited."""

    id: int
    model: str
    reader: LineReader = field(default_factory=LineReader)
    stopping: bool = False  # the router sent it exit or kill
    kill_at: float | None = None
    download: bool = False  # a download child: no slot, never evicted
    exit_replies: list[int] = field(default_factory=list)  # API calls answered at its exit
    memory: Mapping[str, int] = field(default_factory=dict)  # its model's need when spawned
    address: str | None = None  # where it serves HTTP (ChildStarted)


@dataclass(slots=True)
class Model:
    spec: ModelSpec
    status: Status = Status.UNLOADED
    instance: Instance | None = None
    last_used: float = 0.0
    waiters: list[int] = field(default_factory=list)  # waiting for the current load
    forwarded: set[int] = field(default_factory=set)  # in flight on the current child
    in_line: list[int] = field(default_factory=list)  # waiting for a place (its concurrency)
    exit_code: int | None = None
    failed: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    after_download: list[int] = field(default_factory=list)  # requests waiting for the download
    load_after_download: bool = False  # POST /models/load came while it was downloading
    download_result: bool | None = None  # what the download child reported, if it did
    removing: list[int] = field(default_factory=list)  # DELETE /models calls for it
    vanished: bool = False  # gone from the sources: forgotten once its child has exited

    @property
    def busy(self) -> bool:
        return bool(self.waiters) or bool(self.forwarded) or bool(self.in_line)

    @property
    def full(self) -> bool:
        """As many requests in flight as its ``concurrency`` allows: the next one waits."""
        limit = self.spec.concurrency
        return bool(limit) and len(self.forwarded) >= limit

    @property
    def usable(self) -> bool:
        """Has a model child that new requests may be sent or coalesced to."""
        inst = self.instance
        return inst is not None and not inst.stopping and not inst.download

    @property
    def downloading(self) -> bool:
        return self.status in (Status.DOWNLOADING, Status.DOWNLOADED)


class Phase(enum.Enum):
    """Where a request is: waiting for its model's download, in the queue, waiting for its
    model's load, waiting for a free place on its model's child (``concurrency``), or on its
    way to a child. Every phase but the last is a wait (``--queue-max`` counts them)."""

    DOWNLOAD = "download"
    QUEUED = "queued"
    WAITING = "waiting"
    IN_LINE = "in_line"
    FORWARDED = "forwarded"


@dataclass(slots=True)
class Request:
    model: str
    phase: Phase
    seq: int = 0  # its place in arrival order (a request that waited for a download: its end)
    autoload: bool = True  # off: served only by a child that runs when its turn comes
