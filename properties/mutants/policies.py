"""Mutants of the policies of ROUTER.md section 7: each re-introduces the natural bug of one
policy as exact text edits of the production source, kept here and never in ``refimpl/``, in
the shape of ``registry.py``'s rows.

``registry.py`` registers them (``MUTANTS.update(POLICY_MUTANTS)`` at its end), so they are
in the ``--mutant`` choices and in ``python -m properties.zoo``; ``with policy_mutated("P1"):``
applies one in this process.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from .patch import Edit, patch
from .registry import ROUTER, SCHEDULER, Mutant

POLICY_MUTANTS: dict[str, Mutant] = {m.id: m for m in [
    Mutant("P1", "idle TTL: the clock runs from the last request's start and ignores what is "
                 "in flight or waiting: a busy model is unloaded as expired", "core", (
        Edit(ROUTER,
             """        if not ttl or model.instance is not inst or model.busy \\
                or model.status not in (Status.LOADED, Status.SLEEPING) \\
                or inst.model in self.scheduler.queue:
            return None
""",
             """        if not ttl or model.instance is not inst \\
                or model.status not in (Status.LOADED, Status.SLEEPING):
            return None  # the bug: busy or not
"""),
        Edit(ROUTER,
             """            model.forwarded.discard(req)
            self._next_in_line(model, now, out)
            model.last_used = now
""",
             """            model.forwarded.discard(req)
            self._next_in_line(model, now, out)  # the bug: an end is not a use
"""),
    )),
    Mutant("P2", "pin: the eviction candidates do not leave out the pinned models (the pin "
                 "is listed and refuses what it crowds out, but the victim choice forgot it)",
           "core", (
        Edit(SCHEDULER,
             """            if model.spec.pin:
                continue
""",
             """            pass  # the bug: a pinned model is a candidate like any other
"""),
    )),
    Mutant("P3", "per-model concurrency: the limit is checked before the request is counted "
                 "(<= instead of <): one request too many in flight", "core", (
        Edit("refimpl.core.state",
             """        return bool(limit) and len(self.forwarded) >= limit
""",
             """        return bool(limit) and len(self.forwarded) > limit  # the bug
"""),
    )),
    Mutant("P4", "queue limit: the requests in flight are counted as waiting, so a 429 comes "
                 "with room in the queue", "core", (
        Edit(ROUTER,
             """        waiting = sum(1 for r in self.requests.values() if r.phase is not Phase.FORWARDED)
""",
             """        waiting = len(self.requests)  # the bug: in flight counted as waiting
"""),
    )),
]}


@contextlib.contextmanager
def policy_mutated(*names: str) -> Iterator[None]:
    """``with policy_mutated("P1"):`` the block runs with the policy mutants applied."""
    undo = patch("+".join(names), [e for n in names for e in POLICY_MUTANTS[n].edits])
    try:
        yield
    finally:
        undo()
