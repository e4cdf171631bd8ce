"""The mutant registry: each core-level bug of the bug zoo as a named switch.

A mutant re-introduces one real router bug (``shared/spec/BUGZOO.md``) into the core, so the test
suite can show that it notices. Mutants are off unless a test turns them on through
``RouterConfig(mutants=...)``.
"""

from __future__ import annotations

MUTANTS: dict[str, str] = {
    "Z1": "A/B thrash: waiting requests hold no reference, so a model just loaded for them is "
          "evicted before it serves them",
    "Z2": "a model with in-flight requests can be evicted",
    "Z3": "capacity checked without the LOADING children: concurrent cold loads exceed models_max",
    "Z4": "a child asked to stop no longer counts: the next child spawns before the victim exits",
    "Z5": "a child that dies while LOADING leaves its model LOADING forever",
    "Z6": "unloading a LOADING child sends the exit command and waits the stop timeout",
    "Z7": "the queue is looked at only when a request arrives: a second waiter never loads",
    "Z8": "a LOADING model can be evicted before it serves the request it was loaded for",
    "Z9": "requests are forwarded to a child that is stopping",
    "Z10": "running out of capacity answers 500 'model limit reached' instead of queueing",
    "Z14": "an unknown child state aborts the router",
    "Z15": "a finished download's entry is left for the next reload to erase, and the reload "
           "waits for it: GET /models?reload=1 never answers",
    "Z17": "models_max 0 is taken literally: nothing can ever load",
    "Z18": "an unload the router asked for is reported as failed",
    "Z19": "drain fallback: a busy model is force-evicted after the drain timeout",
}


class UnknownMutant(ValueError):
    pass


def check_mutants(names: frozenset[str]) -> frozenset[str]:
    """Return ``names`` if every one is a registered mutant, else raise :class:`UnknownMutant`."""
    unknown = sorted(names - MUTANTS.keys())
    if unknown:
        raise UnknownMutant(f"unknown mutant(s) {', '.join(unknown)}; known: "
                            f"{', '.join(MUTANTS)}")
    return names


_forced: frozenset[str] = frozenset()


def force(names: frozenset[str]) -> None:
    """Turn ``names`` on in every core created from now on (the mutation run's switch: it runs
    the unchanged test suite against a mutant; see ``properties/zoo.py``)."""
    global _forced
    _forced = check_mutants(frozenset(names))


def forced() -> frozenset[str]:
    return _forced
