"""The bug zoo's mutants, kept outside the production code.

Each row of ``shared/spec/BUGZOO.md`` is a :class:`Mutant` (``registry.py``): the bug in one line,
its layer, and its patch as exact text edits of the production source. Three ways to run one:

- in this process: ``with mutated("Z9"): ...``, or ``undo = apply(["Z9"])`` (``patch.py`` swaps
  the code of the changed functions onto the live function objects);
- in a whole process tree: :func:`environment` gives the environment under which every Python
  process started applies the mutants at interpreter start (``site/sitecustomize.py`` reads
  ``ROUTER_MUTANT``), so the routers and children a test starts carry the bug too;
- from the shell: ``python -m properties.mutants Z9 -- python -m refimpl ...``.

Production code never reads ``ROUTER_MUTANT``; test code may (``conftest.py``, the conformance
routers, the differential runner, the load benchmark).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from .patch import Edit, StaleMutant, keep_first, patch, patch_on_import
from .registry import LAYERS, MUTANTS, Mutant

ENV = "ROUTER_MUTANT"  # comma-separated mutant ids, applied by site/sitecustomize.py
SITE = Path(__file__).resolve().parent / "site"  # put on PYTHONPATH with ENV set


class UnknownMutant(ValueError):
    pass


def lookup(names: Iterable[str]) -> list[Mutant]:
    """The mutants named, in order; :class:`UnknownMutant` for a name that is not in the zoo."""
    names = list(names)
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        raise UnknownMutant(f"unknown mutant(s) {', '.join(unknown)}; known: "
                            f"{', '.join(MUTANTS)}")
    return [MUTANTS[n] for n in names]


_active: list[str] = []


def apply(names: Iterable[str]) -> Callable[[], None]:
    """Apply the named mutants in this process; the returned callable takes them back. A
    mutant already active stays as it is (and the callable leaves it)."""
    mutants = [m for m in lookup(names) if m.id not in _active]
    if not mutants:
        return lambda: None
    label = "+".join(m.id for m in mutants)
    undo_patch = patch(label, [e for m in mutants for e in m.edits])
    _active.extend(m.id for m in mutants)

    def undo() -> None:
        undo_patch()
        for m in mutants:
            _active.remove(m.id)

    return undo


def active() -> tuple[str, ...]:
    """The mutants applied in this process now."""
    return tuple(_active)


@contextlib.contextmanager
def mutated(*names: str) -> Iterator[None]:
    """``with mutated("Z9"):`` the block runs with the mutants applied in this process."""
    undo = apply(names)
    try:
        yield
    finally:
        undo()


def parse(value: str | None) -> list[str]:
    """``"Z3,Z4"`` -> ``["Z3", "Z4"]`` (the format of ``ROUTER_MUTANT``)."""
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def environment(names: Iterable[str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with what makes every Python process
    started with it apply ``names`` at interpreter start: ``ROUTER_MUTANT`` and ``site/`` first
    on ``PYTHONPATH``. With no names, the mutant variables are taken out."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SITE)]
    names = [m.id for m in lookup(names)]
    if names:
        env[ENV] = ",".join(names)
        paths.insert(0, str(SITE))
    else:
        env.pop(ENV, None)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    return env


def variables(names: Iterable[str]) -> dict[str, str]:
    """Only the variables :func:`environment` sets (``ROUTER_MUTANT``, ``PYTHONPATH``): the extra
    environment of one process started with the mutants."""
    env = environment(names)
    return {k: env[k] for k in (ENV, "PYTHONPATH") if k in env}


def apply_from_environment() -> tuple[str, ...]:
    """Apply what ``ROUTER_MUTANT`` names for the rest of this process (each module as it is
    imported), unless this process has already (the sitecustomize did); and put ``site/`` on
    this process's ``PYTHONPATH`` so that the processes it starts apply them too. Returns the
    mutants active."""
    names = parse(os.environ.get(ENV))
    missing = lookup(n for n in names if n not in _active)
    if missing:
        patch_on_import("+".join(m.id for m in missing), [e for m in missing for e in m.edits])
        _active.extend(m.id for m in missing)
    else:  # applied at interpreter start (sitecustomize): still ahead of finders added since
        keep_first()
    if names:
        os.environ.update(environment(names))
    return active()


__all__ = ["ENV", "SITE", "LAYERS", "MUTANTS", "Edit", "Mutant", "StaleMutant", "UnknownMutant",
           "active", "apply", "apply_from_environment", "environment", "lookup", "mutated",
           "parse", "variables"]
