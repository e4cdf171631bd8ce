"""The model lifecycle table: legal moves, the one error type, and the diagram drawn from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from refimpl.core.lifecycle import (RUNNING, TRANSITIONS, IllegalTransition, Status,
                                    check_transition, is_legal, mermaid_diagram)

DOC = Path(__file__).resolve().parent.parent / "docs" / "LIFECYCLE.md"


def test_router_md_transitions_are_legal() -> None:
    for old, new in [(Status.UNLOADED, Status.LOADING), (Status.LOADING, Status.LOADED),
                     (Status.LOADED, Status.SLEEPING), (Status.SLEEPING, Status.LOADED),
                     (Status.LOADING, Status.UNLOADED), (Status.LOADED, Status.UNLOADED),
                     (Status.SLEEPING, Status.UNLOADED), (Status.DOWNLOADING, Status.DOWNLOADED)]:
        check_transition("m", old, new)


@pytest.mark.parametrize("old", list(Status))
@pytest.mark.parametrize("new", list(Status))
def test_every_pair_not_in_the_table_raises_the_one_error(old: Status, new: Status) -> None:
    if (old, new) in TRANSITIONS:
        assert is_legal(old, new)
        check_transition("m", old, new)
    else:
        assert not is_legal(old, new)
        with pytest.raises(IllegalTransition) as err:
            check_transition("m", old, new)
        assert err.value.old is old and err.value.new is new and "'m'" in str(err.value)


def test_running_statuses() -> None:
    assert {s for s in Status if s.running} == RUNNING == {
        Status.LOADING, Status.LOADED, Status.SLEEPING}


def test_docs_diagram_is_drawn_from_the_table() -> None:
    """Regenerate with: python -m refimpl.core (and paste into docs/LIFECYCLE.md)."""
    diagram = mermaid_diagram()
    assert diagram.count("-->") == len(TRANSITIONS)
    assert diagram in DOC.read_text(), "docs/LIFECYCLE.md is out of date with TRANSITIONS"
