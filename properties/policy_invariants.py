"""The guarantees of the router's own policies (ROUTER.md section 7: idle TTL, pin, per-model
concurrency, queue limit), by the names they had here before they joined the others.

They live in ``properties/invariants.py`` (``POLICY_CHECKS``, registered in ``CHECKS``), where
every guarantee judges the policies' own decisions for what they are (docs/POLICIES.md), so
``check_all`` is the one checker; ``PolicyChecking`` and ``check_policies`` are that checker
under their old names.
"""

from __future__ import annotations

from .invariants import (POLICY_CHECKS, Checking, check_all, concurrency_held,
                         pinned_never_evicted, queue_limit_held, ttl_unloads_idle)

PolicyChecking = Checking
check_policies = check_all

__all__ = ["POLICY_CHECKS", "PolicyChecking", "check_policies", "concurrency_held",
           "pinned_never_evicted", "queue_limit_held", "ttl_unloads_idle"]

