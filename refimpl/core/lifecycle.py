"""The model status enum and its transition table.

Everything that decides which status a model may move to lives here; the docs diagram is drawn from
``TRANSITIONS`` by :func:`mermaid_diagram`, so the picture cannot drift from the code.
"""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """A model's status as ``GET /models`` reports it (``status.value``)."""

    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    SLEEPING = "sleeping"

    def __repr__(self) -> str:
        return f"Status.{self.name}"

    @property
    def running(self) -> bool:
        """Running models hold a child process and count against the limits."""
        return self in RUNNING


RUNNING = frozenset({Status.LOADING, Status.LOADED, Status.SLEEPING})

# (from, to) -> what causes it. A pair missing here is illegal.
TRANSITIONS: dict[tuple[Status, Status], str] = {
    (Status.DOWNLOADING, Status.DOWNLOADED): "download finished",
    (Status.DOWNLOADING, Status.UNLOADED): "download failed or cancelled",
    (Status.DOWNLOADED, Status.LOADING): "load",
    (Status.DOWNLOADED, Status.UNLOADED): "replaced by a fresh entry",
    (Status.UNLOADED, Status.LOADING): "load",
    (Status.LOADING, Status.LOADED): "ready",
    (Status.LOADING, Status.UNLOADED): "child exited (failed)",
    (Status.LOADED, Status.SLEEPING): "sleeping",
    (Status.SLEEPING, Status.LOADED): "ready {} (woken)",
    # llama-server's child reports load progress while it wakes, and its router publishes it:
    # sleeping -> loading -> loaded (docs/CONFORMANCE.md, S1). Ours goes straight to loaded.
    (Status.SLEEPING, Status.LOADING): "loading progress (waking)",
    (Status.LOADED, Status.UNLOADED): "child exited",
    (Status.SLEEPING, Status.UNLOADED): "child exited",
}


class IllegalTransition(Exception):
    """A status change that ``TRANSITIONS`` does not allow."""

    def __init__(self, model: str, old: Status, new: Status) -> None:
        super().__init__(f"model {model!r}: illegal transition {old.value} -> {new.value}")
        self.model = model
        self.old = old
        self.new = new


def is_legal(old: Status, new: Status) -> bool:
    return (old, new) in TRANSITIONS


def check_transition(model: str, old: Status, new: Status) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is in the table."""
    if (old, new) not in TRANSITIONS:
        raise IllegalTransition(model, old, new)


def mermaid_diagram() -> str:
    """The state diagram, in Mermaid syntax, drawn from ``TRANSITIONS``."""
    lines = ["stateDiagram-v2"]
    for (old, new), cause in TRANSITIONS.items():
        lines.append(f"    {old.name} --> {new.name}: {cause}")
    return "\n".join(lines)

