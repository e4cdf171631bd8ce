"""Hypothesis profiles for the whole suite, and the switch of the mutation run.

Pick a profile with ``--hypothesis-profile``: ``dev`` (default, quick), ``ci`` (derandomized, so
a red CI run is reproducible; the default when ``CI`` is set), ``nightly`` (many more examples,
for finding new counterexamples).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from refimpl.core import mutants

# The tiny GGUF models fixture (``tiny_models``), for every test folder.
pytest_plugins = ["fixtures.pytest_fixtures"]

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
               print_blob=False)

settings.register_profile("dev", max_examples=60, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("ci", max_examples=100, derandomize=True,  # type: ignore[arg-type]
                          **_COMMON)
settings.register_profile("nightly", max_examples=2000, **_COMMON)  # type: ignore[arg-type]
# CI (which sets CI=true) gets the derandomized profile unless --hypothesis-profile says otherwise.
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# The mutation run (python -m properties.zoo) runs this same suite with one mutant forced on.
_MUTANT = os.environ.get("ROUTER_MUTANT", "").strip()
if _MUTANT:
    mutants.force(frozenset(_MUTANT.split(",")))
