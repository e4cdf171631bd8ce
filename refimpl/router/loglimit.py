"""How much a child may make the router log: a token bucket of lines and bytes per child.

A child that floods its output (a log line per token, a runaway loop) must not flood the router's
log nor keep the router busy writing it. Each child gets a bucket of ``burst`` lines and
``burst_bytes`` bytes that refills at ``rate`` lines and ``byte_rate`` bytes per second; a line
that finds the bucket empty is dropped and counted, and the count is logged as one summary line
before the next line that gets through (and when the child exits). A line longer than
``MAX_LOG_LINE`` is logged cut, with its length.

Time comes in as ``now`` (seconds on any monotonic clock): the driver passes the event loop's,
the stderr relay thread ``time.monotonic()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LOG_LINE = 8 * 1024  # bytes of one logged line; the rest is cut
BURST_LINES = 1000  # llama-server logs a few hundred lines while it loads
BURST_BYTES = 256 * 1024
RATE_LINES = 100.0  # per second, sustained
RATE_BYTES = 64 * 1024.0


def cut(line: str, limit: int = MAX_LOG_LINE) -> str:
    """``line``, or its first ``limit`` characters and how long it was."""
    return line if len(line) <= limit else f"{line[:limit]} [cut: {len(line)} characters]"


@dataclass
class LogLimit:
    """One child's bucket. ``take`` says whether a line may be logged now."""

    burst: float = BURST_LINES
    burst_bytes: float = BURST_BYTES
    rate: float = RATE_LINES
    byte_rate: float = RATE_BYTES
    lines: float = field(default=-1.0)  # tokens left; -1: a full bucket
    octets: float = field(default=-1.0)
    last: float | None = None
    dropped: int = 0
    dropped_bytes: int = 0

    def __post_init__(self) -> None:
        self.lines = self.burst if self.lines < 0 else self.lines
        self.octets = self.burst_bytes if self.octets < 0 else self.octets

    def take(self, size: int, now: float) -> bool:
        """True if a line of ``size`` bytes may be logged now (it is paid for); False if it
        is dropped (it is counted)."""
        if self.last is not None and now > self.last:
            elapsed = now - self.last
            self.lines = min(self.burst, self.lines + elapsed * self.rate)
            self.octets = min(self.burst_bytes, self.octets + elapsed * self.byte_rate)
        self.last = now if self.last is None else max(self.last, now)
        size = min(size, MAX_LOG_LINE)
        if self.lines >= 1 and self.octets >= size:
            self.lines -= 1
            self.octets -= size
            return True
        self.dropped += 1
        self.dropped_bytes += size
        return False

    def summary(self) -> str | None:
        """The line that reports what was dropped since the last summary (None if nothing)."""
        if not self.dropped:
            return None
        text = (f"{self.dropped} line(s) ({self.dropped_bytes} bytes) of this child's output "
                f"not logged: over {self.rate:g} lines or {self.byte_rate:g} bytes a second")
        self.dropped = self.dropped_bytes = 0
        return text
