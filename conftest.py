"""Hypothesis profiles for the whole suite, and the switch of the mutation run.

Pick a profile with ``--hypothesis-profile``: ``dev`` (default, quick), ``ci`` (derandomized, so
a red CI run is reproducible; the default when ``CI`` is set), ``nightly`` (many more examples,
for finding new counterexamples).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

from properties import mutants
from properties.example_database import ENV as EXAMPLE_DB, example_database

# The tiny GGUF models fixture (``tiny_models``), for every test folder; the end-of-run leak check;
# the conformance suite's options and fixtures (also the pytest11 entry point of that name, so an
# editable install registers it once, by the same name).
pytest_plugins = ["fixtures.pytest_fixtures", "fixtures.leakcheck", "conformance.plugin"]

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
               print_blob=False)
# Where failing examples are kept (properties/example_database.py): ROUTER_EXAMPLE_DB names a
# directory or a Redis server that a fleet shares; unset, hypothesis's own .hypothesis/examples.
_database = example_database(os.environ.get(EXAMPLE_DB))
_SAVED = {} if _database is None else {"database": _database}

settings.register_profile("dev", max_examples=60, **_SAVED, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("ci", max_examples=100, derandomize=True,  # type: ignore[arg-type]
                          **_COMMON)
settings.register_profile("nightly", max_examples=2000,  # type: ignore[arg-type]
                          **_SAVED, **_COMMON)
# The mutmut run (python -m properties.mutation): the same examples every run and no example
# database, so a mutant's verdict depends on the mutant alone; few examples, since every mutant
# reruns the tests that reach it; no shrinking, since a failure is all a mutant's run needs.
settings.register_profile("mutation", max_examples=20, derandomize=True,  # type: ignore[arg-type]
                          database=None, phases=[Phase.explicit, Phase.generate], **_COMMON)
# The bug zoo (python -m properties.zoo): ci's examples, and no example database, so that what one
# mutant's run found does not help the next one.
settings.register_profile("zoo", max_examples=100, derandomize=True,  # type: ignore[arg-type]
                          database=None, **_COMMON)
# CI (which sets CI=true) gets the derandomized profile unless --hypothesis-profile says otherwise.
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# ROUTER_MUTANT=Z3 python -m pytest ...: the suite against a bug-zoo mutant, in this process and in
# every router and child it starts (python -m properties.zoo sets it up through the same path).
mutants.apply_from_environment()
