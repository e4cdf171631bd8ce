"""Where llama-server deviates from ROUTER.md: one entry per upstream bug the suite found.

A test that replays one is marked ``@deviation("U1")``; against a target the entry names, the
test runs as ``xfail(strict=True)`` with this reason, so the day upstream changes, the suite says
so (an unexpected pass fails the run). Each entry's reproduction is in docs/CONFORMANCE.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True, slots=True)
class Deviation:
    id: str
    summary: str
    targets: tuple[str, ...] = ("llama-server",)  # report columns where it shows

    @property
    def reason(self) -> str:
        return f"upstream deviation {self.id} (docs/CONFORMANCE.md): {self.summary}"


DEVIATIONS: dict[str, Deviation] = {d.id: d for d in [
    Deviation("U1", "--models-max 0 (unlimited) with a load-on-startup model: llama-server "
                    "refuses to start ('number of models to load on startup (1) exceeds "
                    "models_max (0)'); bug zoo Z17"),
    Deviation("U2", "an unload the router asked for is reported as failed (\"failed\": true, "
                    "exit code 9) when the child had to be killed after its stop-timeout; bug "
                    "zoo Z18 (#23257)"),
]}


def deviation(id: str) -> pytest.MarkDecorator:
    """Mark a test that replays upstream deviation ``id`` (see :data:`DEVIATIONS`)."""
    if id not in DEVIATIONS:
        raise KeyError(f"unknown deviation {id!r}; add it to conformance/deviations.py")
    return pytest.mark.deviation(id)
