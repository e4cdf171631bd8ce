"""The child's side of the line protocol: state messages written to the router, one line at a time.

In router mode the announcer owns a private duplicate of the original stdout, and file descriptor 1
is pointed at stderr. Any other write to stdout (a stray ``print``, llama.cpp's C ``printf``, a
library's progress bar) then lands in the log instead of possibly gluing itself in front of a
message on the router's pipe, where a message that does not *start* the line is just a log line.
Each message is one ``os.write`` of the complete line under a lock, so progress callbacks on the
loader thread and state changes on the event loop cannot interleave.
"""

from __future__ import annotations

import os
import sys
import threading

from refimpl.core.protocol import Message, format_message


class Announcer:
    """Writes protocol messages; a no-op when the process is not a router's child."""

    __slots__ = ("_fd", "_lock")

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    @classmethod
    def for_router(cls) -> "Announcer":
        """Take stdout for the protocol and send everything else written to fd 1 to stderr."""
        sys.stdout.flush()
        fd = os.dup(1)
        os.dup2(2, 1)
        return cls(fd)

    @classmethod
    def silent(cls) -> "Announcer":
        return cls(None)

    @property
    def active(self) -> bool:
        return self._fd is not None

    def send(self, message: Message) -> None:
        if self._fd is None:
            return
        line = format_message(message)
        with self._lock:
            try:
                written = os.write(self._fd, line)
                while written < len(line):  # a blocking pipe takes it all; be safe anyway
                    written += os.write(self._fd, line[written:])
            except (BrokenPipeError, OSError):
                # The router is gone; EOF on stdin will tell the process to exit.
                pass
