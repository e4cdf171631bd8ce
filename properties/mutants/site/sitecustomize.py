"""Applies the bug-zoo mutants named in ``ROUTER_MUTANT`` at interpreter start.

Only on ``PYTHONPATH`` when ``properties.mutants.environment()`` put it there (the zoo runner, the
conformance and differential runners, ``python -m properties.mutants``): every Python process of
that tree, routers and children included, then runs with the mutants. A mutant that does not
apply stops the process, rather than letting it run the correct code under a mutant's name.
"""

import os
import sys

if os.environ.get("ROUTER_MUTANT", "").strip():
    try:
        from properties.mutants import apply_from_environment

        apply_from_environment()
    except BaseException as exc:  # site.py would only print a warning and carry on
        sys.stderr.write(f"sitecustomize: ROUTER_MUTANT={os.environ['ROUTER_MUTANT']!r} "
                         f"could not be applied: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(70)
