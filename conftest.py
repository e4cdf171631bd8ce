"""Hypothesis profiles and markers for the whole suite.

Pick a profile with ``--hypothesis-profile``: ``dev`` (default, quick), ``ci`` (derandomized, so
a red CI run is reproducible), ``nightly`` (many more examples, for finding new counterexamples).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
               print_blob=False)

settings.register_profile("dev", max_examples=60, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("ci", max_examples=100, derandomize=True,  # type: ignore[arg-type]
                          **_COMMON)
settings.register_profile("nightly", max_examples=2000, **_COMMON)  # type: ignore[arg-type]
settings.load_profile("dev")
