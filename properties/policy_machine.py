"""The state machine of ``machine.py`` on routers with the policies of ROUTER.md section 7 on.

Each program first draws the policies (the router's TTL and queue limit, each model's own TTL,
pin and concurrency limit: a mixture, which shrinks towards none), then plays the same clients,
operator and chaos monkey, plus an operator who reloads the sources with each model's policies
drawn anew (same files: its child keeps running, the change is published as
``policy_change``). Every guarantee is checked as the program runs and at its end: those of
``invariants.CHECKS`` and ``policy_invariants.POLICY_CHECKS`` (``PolicyChecking``). With
``groups=True`` each model's group is drawn too (none, or one of three, each swap, persistent
or neither; a reload draws them anew, published as ``group_change``), and
``group_invariants.GROUP_CHECKS`` is checked beside them (``GroupChecking``).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from refimpl.core.config import Group, RouterConfig
from refimpl.core.events import DownloadAsked
from simulator.engine import Simulation
from simulator.faults import Faults
from simulator.policies import CONCURRENCY, GROUPS, QUEUE_MAX, TTLS, Policies, apply

from .invariants import Checking
from .machine import DOWNLOADS, MACHINE_FAULTS, router_machine


def policies(models: int, groups: bool = False) -> st.SearchStrategy[Policies]:
    """A mixture of section 7's policies for ``models`` models; never every model pinned.
    ``groups``: each model's group too, and which groups are swap or persistent (shrinking
    towards no group at all)."""
    def some_free(pinned: tuple[bool, ...]) -> tuple[bool, ...]:
        return pinned[:-1] + (False,) if pinned and all(pinned) else pinned
    subset = st.lists(st.sampled_from(GROUPS), unique=True).map(tuple)
    return st.builds(
        Policies,
        ttl=st.sampled_from(TTLS),
        queue_max=st.sampled_from(QUEUE_MAX),
        ttls=st.tuples(*[st.sampled_from((None, *TTLS))] * models),
        pinned=st.tuples(*[st.booleans()] * models).map(some_free),
        limits=st.tuples(*[st.sampled_from(CONCURRENCY)] * models),
        groups=st.tuples(*[st.sampled_from((None, *GROUPS))] * models) if groups
        else st.just(()),
        swap=subset if groups else st.just(()),
        persistent=subset if groups else st.just(()))


def policy_machine(base: RouterConfig, faults: Faults = MACHINE_FAULTS, focus: str = "all",
                   groups: bool = False) -> type[RuleBasedStateMachine]:
    """``machine.router_machine(base)`` with the policies drawn at the start of each program."""
    names = [spec.name for spec in base.models]
    opening = st.lists(st.sampled_from(names), max_size=0 if focus == "all" else 6)

    class PolicyMachine(router_machine(base, faults, focus)):  # type: ignore[misc]
        @initialize(seed=st.integers(0, 2**32), opening=opening,
                    chosen=policies(len(base.models), groups))
        def start(self, seed: int, opening: list[str], chosen: Policies) -> None:
            config = apply(base, chosen)
            self.checking = Checking(config)  # every guarantee, the policies' and groups' too
            self.sim = Simulation(config, None, faults, random.Random(seed), duration=0.0,
                                  drain=1e9)
            self.sim.start()
            self.sim.run_until(0.0)
            if focus == "downloads":
                for name in DOWNLOADS:
                    self.sim.api(DownloadAsked, name)
            for name in opening:  # a burst of long requests: most of them wait
                self.sim.request(name, 30.0)

        @rule(data=st.data())
        def repolicy(self, data: Any) -> None:
            """The sources read again with each model's TTL, pin and concurrency drawn anew,
            its file unchanged: no child stops for it."""
            core = self.s.core
            known = [m.spec for m in core.models.values()
                     if m.spec.name in names and not m.vanished]
            chosen = data.draw(policies(len(known), groups), label="policies")
            specs = tuple(replace(spec, ttl=chosen.ttls[i], pin=chosen.pinned[i],
                                  concurrency=chosen.limits[i], group=spec.group if not groups
                                  else self._group_of(chosen, i)) for i, spec in enumerate(known))
            self.s.catalog(specs)

        @staticmethod
        def _group_of(chosen: Policies, i: int) -> Group | None:
            name = chosen.groups[i]
            return None if name is None else Group(name, name in chosen.swap,
                                                   name in chosen.persistent)

    PolicyMachine.__name__ = PolicyMachine.__qualname__ = (
        f"{'Group' if groups else 'Policy'}Machine_{base.policy.replace('-', '_')}_{focus}")
    return PolicyMachine
