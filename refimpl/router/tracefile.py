"""``--trace FILE``: the core's events and commands, written as they happen.

The file is a run of pickles, each a list of ``refimpl.core.trace.At`` (a batch of entries);
:func:`read_trace` joins them. Written in batches rather than kept until the router stops: a
router with ``--trace`` ran with every entry in memory (3 MiB of its peak after a minute of
``bench/load.py``, and growing for as long as it ran), and lost them all if it was killed.
A router killed mid-write leaves a last batch cut short: :func:`read_trace` stops before it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

from refimpl.core.trace import At

BATCH = 256  # entries per pickle


class TraceWriter:
    """What the driver appends its trace to (``Driver.trace``): entries go to ``path`` in
    batches; ``close()`` writes the last one."""

    def __init__(self, path: str | Path) -> None:
        self.file = open(path, "wb")
        self.batch: list[At] = []
        self.count = 0

    def append(self, entry: At) -> None:
        self.batch.append(entry)
        self.count += 1
        if len(self.batch) >= BATCH:
            self.flush()

    def extend(self, entries: Iterable[At]) -> None:
        for entry in entries:
            self.append(entry)

    def __len__(self) -> int:
        return self.count

    def flush(self) -> None:
        if self.batch:
            pickle.dump(self.batch, self.file, protocol=pickle.HIGHEST_PROTOCOL)
            self.file.flush()
            self.batch = []

    def close(self) -> None:
        if not self.file.closed:
            self.flush()
            self.file.close()


def read_trace(path: str | Path) -> list[At]:
    """Every entry a trace file holds, in order (a last batch cut short is left out)."""
    entries: list[At] = []
    with open(path, "rb") as file:
        while True:
            try:
                batch = pickle.load(file)
            except (EOFError, pickle.UnpicklingError):  # the end, or a batch cut short by a kill
                break
            entries.extend(batch)
    return entries
