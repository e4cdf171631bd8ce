"""A one-line progress bar on stderr for long runs (the sweep, the bug zoo), and the lines that
scroll above it.

On a terminal the bar redraws in place, at most ten times a second; into a file or a pipe it
writes a plain line at most every ten seconds, so a nightly log shows progress without megabytes
of carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

WIDTH = 30


class Progress:
    def __init__(self, total: int, unit: str, *, counted: str = "failing",
                 stream: TextIO | None = None) -> None:
        self.total = total
        self.unit = unit
        self.counted = counted  # what the second number counts
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = 0.1 if self.tty else 10.0
        self.start = time.perf_counter()
        self.done = 0
        self.failing = 0
        self._drawn = 0.0  # when the bar was last drawn, 0 for never
        self._on_screen = False

    def advance(self, done: int, failing: int) -> None:
        """``done`` more units have ended, ``failing`` of them failing (or what ``counted``
        says)."""
        self.done += done
        self.failing += failing
        now = time.perf_counter()
        if self.done >= self.total or now - self._drawn >= self.every:
            self._draw(now)

    def note(self, text: str, say: Callable[[str], object] | None = None) -> None:
        """Print ``text`` above the bar, with ``say`` (e.g. a ``print`` to stdout while the bar
        is on stderr) or else on the bar's stream: a failing seed as it is found."""
        self._clear()
        if say is not None:
            say(text)
        else:
            self.stream.write(text.rstrip("\n") + "\n")
            self.stream.flush()
        if self.tty:
            self._draw(time.perf_counter())

    def close(self) -> None:
        if self._on_screen:
            self.stream.write("\n")
            self.stream.flush()
            self._on_screen = False

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        filled = WIDTH * self.done // max(self.total, 1)
        return (f"[{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total} {self.unit}, "
                f"{self.failing} {self.counted}, {self.done / elapsed:.1f} {self.unit}/s")

    def _draw(self, now: float) -> None:
        self._drawn = now
        if self.tty:
            self.stream.write("\r" + self.line())
            self._on_screen = True
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self._on_screen:
            self.stream.write("\r\033[K")  # back to the start of the line, and erase it
            self._on_screen = False
