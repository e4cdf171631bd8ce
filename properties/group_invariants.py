"""The guarantee of ROUTER.md section 7's groups, by the names it had here before it joined the
others.

``groups_held`` lives in ``properties/invariants.py`` (``GROUP_CHECKS``, registered in
``CHECKS``), where every guarantee reads a group's own decisions for what they are
(docs/POLICIES.md): a stop that makes way for another group is ``Replay.stop_reason``'s
``"grouped"``, a pinned model in a group's way is ``Replay.pinned_out``'s, ``group_change`` is
a known event. So ``check_all`` is the one checker; ``GroupChecking`` and ``check_groups`` are
that checker under their old names.
"""

from __future__ import annotations

from .invariants import GROUP_CHECKS, Checking, check_all, groups_held

GroupChecking = Checking
check_groups = check_all

__all__ = ["GROUP_CHECKS", "GroupChecking", "check_groups", "groups_held"]
