"""Laws of the core's values: every config and command ``repr`` is Python that builds an equal
value (traces, sweeps' failing seeds and the stateful tests' reports are read back from them),
and a config value is refused, with a message that says which and why, exactly when it is out
of range.

Found by mutmut (docs/MUTANTS.md): the reprs of the section-7 fields (a model's TTL, pin,
concurrency limit and group; the config's TTL, queue limit and drain timeout) and the range
checks at 0 were not checked by any law.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.core import commands, config
from refimpl.core.commands import ModelView, Publish, Reply, SendExit, Spawn
from refimpl.core.config import POLICIES, Card, Group, ModelSpec, RouterConfig

NAMESPACE = {**vars(config), **vars(commands)}
TEXT = st.text(max_size=6)
NAME = st.text(min_size=1, max_size=6)
MAYBE_TEXT = st.none() | TEXT
SECONDS = st.sampled_from([0.0, 0.5, 3.0, 600.0])

cards = st.builds(
    Card, source=st.sampled_from(["", "models_dir", "preset", "cache"]), path=MAYBE_TEXT,
    mmproj=MAYBE_TEXT, args=st.lists(TEXT, max_size=2).map(tuple),
    tags=st.lists(TEXT, max_size=2).map(tuple), hidden=st.booleans(),
    architecture=st.none() | st.dictionaries(TEXT, st.lists(TEXT, max_size=2).map(tuple),
                                             max_size=2),
    child_cmd=MAYBE_TEXT, health=MAYBE_TEXT, load_timeout=st.none() | SECONDS)
groups = st.builds(Group, NAME, swap=st.booleans(), persistent=st.booleans())
specs = st.builds(
    ModelSpec, NAME, aliases=st.lists(NAME, max_size=2).map(tuple),
    memory=st.dictionaries(st.sampled_from(["host", "gpu0"]), st.integers(0, 2**40)),
    stop_timeout=SECONDS, load_on_startup=st.booleans(),
    launch=st.lists(TEXT, max_size=2).map(tuple), card=st.just(Card()) | cards,
    ttl=st.none() | SECONDS, pin=st.booleans(), concurrency=st.integers(0, 3),
    group=st.none() | groups)


@st.composite
def configs(draw: st.DrawFn) -> RouterConfig:
    models: list[ModelSpec] = []
    names: set[str] = set()
    for spec in draw(st.lists(specs, max_size=3)):
        own = {spec.name, *spec.aliases}
        if len(own) == 1 + len(spec.aliases) and not own & names:
            models.append(spec)
            names |= own
    by_group = {spec.group.name: spec.group for spec in models if spec.group is not None}
    models = [spec if spec.group is None else replace(spec, group=by_group[spec.group.name])
              for spec in models]  # one setting per group name
    return RouterConfig(tuple(models), models_max=draw(st.integers(0, 4)),
                        devices=draw(st.dictionaries(st.sampled_from(["host", "gpu0"]),
                                                     st.integers(0, 2**40))),
                        autoload=draw(st.booleans()), policy=draw(st.sampled_from(POLICIES)),
                        drain_timeout=draw(SECONDS), ttl=draw(SECONDS),
                        queue_max=draw(st.integers(0, 3)))


# Each kind of value drawn on its own: under the mutation run's 20 examples a draw from all of
# them at once met some kinds once or twice (mutmut: SendExit's and ModelView's repr mutants
# lived in one run and died in another).
KINDS: dict[str, st.SearchStrategy[Any]] = {
    "Card": cards, "Group": groups, "ModelSpec": specs, "RouterConfig": configs(),
    "Spawn": st.builds(Spawn, st.integers(0, 9), NAME, download=st.booleans(),
                       card=st.just(Card()) | cards),
    "SendExit": st.builds(SendExit, st.integers(0, 9), expired=st.booleans(),
                          group=st.none() | NAME),
    "Reply": st.builds(Reply, st.integers(0, 9), st.sampled_from([200, 400, 429, 503]), TEXT,
                       message=TEXT, retry_after=st.none() | st.integers(0, 5)),
    "Publish": st.builds(Publish, NAME, TEXT,
                         data=st.dictionaries(TEXT, st.integers(), max_size=2)),
    "ModelView": st.builds(ModelView, NAME, st.lists(NAME, max_size=2).map(tuple),
                           st.sampled_from(["unloaded", "loading", "loaded"]), card=cards,
                           failed=st.booleans(), exit_code=st.none() | st.integers(-9, 9),
                           info=st.dictionaries(TEXT, st.integers(), max_size=2), ttl=SECONDS,
                           pinned=st.booleans(), concurrency=st.integers(0, 3),
                           group=st.none() | NAME),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@given(data=st.data())
def test_every_repr_builds_an_equal_value(kind: str, data: st.DataObject) -> None:
    value = data.draw(KINDS[kind])
    again = eval(repr(value), dict(NAMESPACE))
    assert again == value, repr(value)
    assert repr(again) == repr(value)


def test_a_repr_names_what_differs_from_the_defaults() -> None:
    """Each section-7 field shows when it is set (a repr that left one out would rebuild a value
    without it: the law above), and a default one is left out, so reprs stay short."""
    spec = ModelSpec("m", ttl=5.0, pin=True, concurrency=2, group=Group("g", swap=True))
    assert repr(spec).endswith(", ttl=5.0, pin=True, concurrency=2, "
                               "group=Group('g', swap=True))"), repr(spec)
    assert "ttl" not in repr(ModelSpec("m")) and "card" not in repr(ModelSpec("m"))
    assert repr(SendExit(3)) == "SendExit(instance=3)"
    assert repr(Reply(1, 429, "busy")) == "Reply(req=1, status=429, kind='busy', message='')"
    assert repr(RouterConfig(())) == ("RouterConfig(models=(), models_max=4, devices={}, "
                                      "autoload=True, policy='fifo', drain_timeout=30.0)")


@given(stop_timeout=st.sampled_from([-1.0, -0.001, 0.0, 2.0]),
       ttl=st.sampled_from([None, -1.0, 0.0, 5.0]), concurrency=st.integers(-2, 2),
       need=st.integers(-2, 2))
def test_a_model_spec_refuses_exactly_what_is_out_of_range(stop_timeout: float,
                                                           ttl: float | None, concurrency: int,
                                                           need: int) -> None:
    problems = [why for bad, why in (
        (stop_timeout < 0, "stop_timeout must be >= 0"),
        (ttl is not None and ttl < 0, "ttl must be >= 0 (0 means never)"),
        (concurrency < 0, "concurrency must be >= 0 (0: no limit)"),
        (need < 0, "memory needs must be >= 0")) if bad]

    def make() -> ModelSpec:
        return ModelSpec("m", memory={"host": need}, stop_timeout=stop_timeout, ttl=ttl,
                         concurrency=concurrency)

    if not problems:
        assert make().memory == {"host": need}
        return
    with pytest.raises(ValueError) as refused:
        make()
    assert str(refused.value) == f"model 'm': {problems[0]}"


@given(models_max=st.integers(-1, 1), ttl=st.sampled_from([-1.0, 0.0, 1.0]),
       queue_max=st.integers(-1, 1))
def test_a_router_config_refuses_exactly_the_limits_out_of_range(models_max: int, ttl: float,
                                                                 queue_max: int) -> None:
    problems = [why for bad, why in (
        (models_max < 0, "models_max must be >= 0 (0 means unlimited)"),
        (ttl < 0, "ttl must be >= 0 (0 means never)"),
        (queue_max < 0, "queue_max must be >= 0 (0 means unlimited)")) if bad]

    def make() -> RouterConfig:
        return RouterConfig((), models_max=models_max, ttl=ttl, queue_max=queue_max)

    if not problems:
        made = make()
        assert (made.models_max, made.ttl, made.queue_max) == (models_max, ttl, queue_max)
        return
    with pytest.raises(ValueError) as refused:
        make()
    assert str(refused.value) == problems[0]


def test_a_group_needs_a_name() -> None:
    with pytest.raises(ValueError, match="^a group needs a name$"):
        Group("")
    assert Group("g") == Group("g", swap=False, persistent=False)
