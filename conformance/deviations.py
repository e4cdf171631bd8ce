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
                    "\"exit_code\": 1) when the child had to be killed after its stop-timeout; "
                    "bug zoo Z18 (#23257)"),
    Deviation("U3", "a proxied answer ends the client's kept-alive connection without "
                    "\"Connection: close\" (it even says \"Keep-Alive: timeout=5\"): the next "
                    "request on it finds the connection closed ('server disconnected')"),
    Deviation("U4", "a llama-server child asked to exit with a request in flight hangs in its "
                    "clean-up until it is killed at the stop-timeout (10 s); its stream stalls "
                    "meanwhile", targets=("llama-server", "interop")),
    Deviation("UD1", "download progress is not throttled to >= 100 ms: the first update follows "
                     "the start report within milliseconds (on_start is not throttled)"),
    Deviation("UD2", "a request for a model that is still downloading is refused (400 'model "
                     "is not running') instead of being served once the download finishes"),
    Deviation("UD3", "POST /models answers 200 for a repo or tag the hub does not have; the "
                     "download child then fails (download_failed) instead of a 400 up front"),
    Deviation("UD4", "DELETE /models of a model that is not from the cache answers 500 "
                     "(server_error), not a 400 client error"),
]}


def deviation(id: str) -> pytest.MarkDecorator:
    """Mark a test that replays upstream deviation ``id`` (see :data:`DEVIATIONS`)."""
    if id not in DEVIATIONS:
        raise KeyError(f"unknown deviation {id!r}; add it to conformance/deviations.py")
    return pytest.mark.deviation(id)
