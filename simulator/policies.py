"""Routers with the policies of ROUTER.md section 7 on: idle TTLs, pins, per-model concurrency
limits, a queue limit and groups (random memberships, swap and persistent groups), alone or mixed, drawn from one seed (or from hypothesis, through
``draw``) so that a run with them replays and shrinks like any other.

``Policies`` is what a run asks for (``python -m simulator run --ttl 30 --pin 1 ...``);
:func:`apply` puts it on a configuration; :func:`mixed` draws a random mixture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable, Sequence, TypeVar

from refimpl.core.config import Group, ModelSpec, RouterConfig

T = TypeVar("T")
Draw = Callable[[Sequence[T]], T]  # picks one of the choices: random.choice, or hypothesis's

TTLS = (0.0, 0.5, 3.0, 20.0)  # 0: off; the rest shorter than, like, and longer than a request
CONCURRENCY = (0, 1, 2)  # 0: no limit
QUEUE_MAX = (0, 1, 2, 5)  # 0: no limit
GROUPS = ("g0", "g1", "g2")  # the groups a model may be drawn into (None: its own group)


@dataclass(frozen=True)
class Policies:
    """Section 7's settings for a simulated router: ``ttl`` for every model (``--models-ttl``),
    the first ``pins`` models pinned, ``concurrency`` for every model, ``queue_max``; and per
    model, ``ttls`` / ``pinned`` / ``limits`` where they are drawn one by one (a mixture)."""

    ttl: float = 0.0
    pins: int = 0
    concurrency: int = 0
    queue_max: int = 0
    ttls: tuple[float | None, ...] = ()  # per model: its own ttl (None: the router's)
    pinned: tuple[bool, ...] = ()
    limits: tuple[int, ...] = ()
    # groups: each model's group (None: its own; () or all None: groups off), and which of
    # those groups are swap groups and which persistent
    groups: tuple[str | None, ...] = ()
    swap: tuple[str, ...] = ()
    persistent: tuple[str, ...] = ()

    @property
    def on(self) -> bool:
        return self != Policies()


def apply(config: RouterConfig, policies: Policies) -> RouterConfig:
    """``config`` with ``policies`` on (a model beyond a per-model tuple keeps the common
    setting)."""
    specs = []
    for i, spec in enumerate(config.models):
        ttl = policies.ttls[i] if i < len(policies.ttls) else spec.ttl
        pin = policies.pinned[i] if i < len(policies.pinned) else (i < policies.pins or spec.pin)
        limit = policies.limits[i] if i < len(policies.limits) else (
            policies.concurrency or spec.concurrency)
        group = policies.groups[i] if i < len(policies.groups) else None
        specs.append(replace(spec, ttl=ttl, pin=pin, concurrency=limit, group=spec.group if (
            group is None) else Group(group, group in policies.swap,
                                      group in policies.persistent)))
    return replace(config, models=tuple(specs), ttl=policies.ttl or config.ttl,
                   queue_max=policies.queue_max or config.queue_max)


def grouped(models: int, groups: int, *, swap: bool = False, persistent: int = 0) -> Policies:
    """Models m0.. dealt round-robin into ``groups`` groups g0..; every group ``swap`` or not,
    the first ``persistent`` of them persistent (``python -m simulator run --groups N``)."""
    names = tuple(f"g{k}" for k in range(groups))
    return Policies(groups=tuple(names[i % groups] for i in range(models)) if groups else (),
                    swap=names if swap else (), persistent=names[:persistent])


def mixed(models: int, draw: Draw[object], *, groups: bool = False) -> Policies:
    """A random mixture: each policy on or off, and each model's own TTL, pin and limit drawn.
    At most all but one model pinned, so that pins alone never leave every request refused.
    ``groups``: each model's group drawn too (none, or one of three, each swap or persistent
    or neither), after the rest, so that the rest is what the same draws give without."""
    def pick(choices: Sequence[T]) -> T:
        return draw(choices)  # type: ignore[return-value]
    ttl = pick(TTLS)
    ttls = tuple(pick((None, None, *TTLS)) for _ in range(models))
    pinned = [pick((False, False, True)) for _ in range(models)]
    if models and all(pinned):
        pinned[-1] = False
    limits = tuple(pick(CONCURRENCY) for _ in range(models))
    chosen = Policies(ttl=ttl, queue_max=pick(QUEUE_MAX), ttls=ttls, pinned=tuple(pinned),
                      limits=limits)
    if not groups:
        return chosen
    memberships = tuple(pick((None, *GROUPS, GROUPS[0])) for _ in range(models))
    swap = tuple(g for g in GROUPS if pick((False, True)))
    persistent = tuple(g for g in GROUPS if pick((False, False, True)))
    return replace(chosen, groups=memberships, swap=swap, persistent=persistent)


def seeded(models: int, seed: int, *, groups: bool = False) -> Policies:
    """:func:`mixed`, drawn from ``seed``."""
    rng = random.Random(f"{seed}:policies")
    return mixed(models, rng.choice, groups=groups)


def spec_with(spec: ModelSpec, ttl: float | None, pin: bool, concurrency: int) -> ModelSpec:
    return replace(spec, ttl=ttl, pin=pin, concurrency=concurrency)
