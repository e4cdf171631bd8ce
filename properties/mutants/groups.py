"""A mutant of ROUTER.md section 7's groups: it re-introduces the natural bug (a group member
loaded while a member of another group still runs) as exact text edits of the production
source, kept here and never in ``refimpl/``, in the shape of ``registry.py``'s rows.

``GROUP_MUTANTS`` is in ``registry.MUTANTS`` (``MUTANTS.update`` at its end): ``--mutant G1``,
``python -m properties.zoo G1``; ``with group_mutated("G1"):`` applies one in this process.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from .patch import Edit, patch
from .registry import SCHEDULER, Mutant

GROUP_MUTANTS: dict[str, Mutant] = {m.id: m for m in [
    Mutant("G1", "groups: the stop of the models outside the group is not waited for (only "
                 "those not yet asked to stop are in the way): the new member starts while an "
                 "outsider still exits", "core", (
        Edit(SCHEDULER,
             """        return [m for m in self._counted(projected=False) if self.in_the_way(model, m)]
""",
             """        return [m for m in self._counted(projected=True)  # the bug: asked to stop is gone
                if self.in_the_way(model, m)]
"""),
        Edit(SCHEDULER,
             """                self._make_way(model, way, now, out)
                return
            if not self._fits(""",
             """                self._make_way(model, way, now, out)
                if any(not m.instance.stopping for m in way if m.instance):  # the bug
                    return
            if not self._fits("""),
    )),
]}


@contextlib.contextmanager
def group_mutated(*names: str) -> Iterator[None]:
    """``with group_mutated("G1"):`` the block runs with the group mutants applied."""
    undo = patch("+".join(names), [e for n in names for e in GROUP_MUTANTS[n].edits])
    try:
        yield
    finally:
        undo()
