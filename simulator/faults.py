"""What can go wrong with a simulated child, and how slowly it loads. All draws use the run's rng."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Faults:
    """Per-load / per-request fault probabilities. No fault starts at or after ``until``.

    ``load_time`` is the (low, high) range of a uniform load time in seconds; ``sleep_idle`` makes
    children report ``sleeping`` after that many idle seconds (``None``: never). A download takes
    ``download_time`` seconds and fails with probability ``download_fail``.
    """

    load_time: tuple[float, float] = (0.3, 1.5)
    exit_time: tuple[float, float] = (0.01, 0.2)
    wake_time: tuple[float, float] = (0.05, 0.3)
    crash_loading: float = 0.0
    crash_serving: float = 0.0
    crash_idle: float = 0.0
    hang_on_exit: float = 0.0
    garbage: float = 0.0
    overlong: float = 0.0
    unknown_state: float = 0.0
    sleep_idle: float | None = None
    download_time: tuple[float, float] = (1.0, 5.0)
    download_fail: float = 0.0
    until: float = math.inf

    def __post_init__(self) -> None:
        for name in ("crash_loading", "crash_serving", "crash_idle", "hang_on_exit", "garbage",
                     "overlong", "unknown_state", "download_fail"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"fault probability {name}={p} is not in 0..1")
        lo, hi = self.load_time
        if not 0 <= lo <= hi:
            raise ValueError(f"load_time range {self.load_time} is not 0 <= low <= high")


FAULT_PRESETS: dict[str, Faults] = {
    "none": Faults(),
    "light": Faults(crash_loading=0.02, crash_serving=0.002, crash_idle=0.01, hang_on_exit=0.05,
                    garbage=0.05, overlong=0.01, unknown_state=0.02),
    "heavy": Faults(crash_loading=0.15, crash_serving=0.02, crash_idle=0.05, hang_on_exit=0.2,
                    garbage=0.2, overlong=0.05, unknown_state=0.1, sleep_idle=5.0,
                    download_fail=0.3),
    "sleepy": Faults(sleep_idle=2.0),
}
