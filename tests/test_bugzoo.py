"""Each core-level bug zoo row: its scenario holds every guarantee on the correct core, and the
guarantees it names fail when the row's mutant re-introduces the bug."""

from __future__ import annotations

import pytest

from properties.bugzoo import SCENARIOS

THRASH_ROWS = {"Z1", "Z2", "Z7", "Z8", "Z9", "Z19"}  # thrash and starvation scenarios


def _params() -> list[object]:
    return [pytest.param(zid, id=zid,
                         marks=[pytest.mark.thrash] if zid in THRASH_ROWS else [])
            for zid in SCENARIOS]


@pytest.mark.parametrize("zid", _params())
def test_scenario_holds_on_correct_core(zid: str) -> None:
    violations = SCENARIOS[zid].violations()
    assert violations == [], "\n".join(map(str, violations))


@pytest.mark.parametrize("zid", _params())
def test_mutant_caught_by_its_scenario(zid: str) -> None:
    scenario = SCENARIOS[zid]
    caught = scenario.caught(frozenset({zid}))
    assert caught, f"mutant {zid} ({scenario.title}) was not caught by {scenario.catches}"
    print(f"{zid} caught: {caught[0]}")


def test_every_core_mutant_has_a_scenario() -> None:
    from refimpl.core.mutants import MUTANTS
    assert set(MUTANTS) == set(SCENARIOS)
