"""The bug zoo: every row is a mutant that applies to the current source, and each core-level row
has a scenario that holds every guarantee on the correct core and fails a guarantee it names when
the row's mutant (``properties/mutants``) re-introduces the bug."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from properties import bugzoo
from properties.bugzoo import SCENARIOS, Scenario, router_crashed
from properties.mutants import (MUTANTS, StaleMutant, UnknownMutant, active, apply,
                                environment, mutated)
from properties.mutants.patch import Edit, patch
from refimpl.core import scheduler

ROOT = Path(__file__).resolve().parent.parent
# The zoo runs this file with a mutant applied to the whole process: only the scenarios on the
# "correct" core may fail then (that is the kill); the checks of the machinery step aside.
machinery = pytest.mark.skipif(bool(active()), reason="this process runs a mutant")
THRASH_ROWS = {"Z1", "Z2", "Z7", "Z8", "Z9", "Z19"}  # thrash and starvation scenarios


def _params() -> list[object]:
    return [pytest.param(zid, id=zid,
                         marks=[pytest.mark.thrash] if zid in THRASH_ROWS else [])
            for zid in SCENARIOS]


@pytest.mark.parametrize("zid", _params())
def test_scenario_holds_on_correct_core(zid: str) -> None:
    violations = SCENARIOS[zid].violations()
    assert violations == [], "\n".join(map(str, violations))


@machinery
@pytest.mark.parametrize("zid", _params())
def test_mutant_caught_by_its_scenario(zid: str) -> None:
    scenario = SCENARIOS[zid]
    caught = scenario.caught([zid])
    assert caught, f"mutant {zid} ({scenario.title}) was not caught by {scenario.catches}"
    print(f"{zid} caught: {caught[0]}")


def test_every_core_mutant_has_a_scenario() -> None:
    # the bug zoo's rows (BUGZOO.md) each have a scenario; the policy mutants (P, G) are killed
    # by their laws and sweeps (properties/test_policy_laws.py, test_group_laws.py)
    assert {m.id for m in MUTANTS.values() if m.layer == "core" and m.id.startswith("Z")} \
        == set(SCENARIOS)


def test_every_layer_has_tests_to_kill_its_mutants() -> None:
    from properties.zoo import LAYER_TESTS
    assert {m.layer for m in MUTANTS.values()} <= set(LAYER_TESTS)
    for paths in LAYER_TESTS.values():
        assert paths and all((ROOT / p).exists() for p in paths), paths


def test_the_zoo_has_every_row_of_the_spec() -> None:
    spec = (ROOT.parent / "shared" / "spec" / "BUGZOO.md")
    if not spec.exists():
        pytest.skip("shared/spec/BUGZOO.md is not beside this checkout")
    rows = re.findall(r"^\| (Z\d+)\b", spec.read_text(), re.MULTILINE)
    assert rows and set(rows) == {z for z in MUTANTS if z.startswith("Z")}


# -- the mutants themselves ------------------------------------------------------------------------


@machinery
@pytest.mark.parametrize("zid", list(MUTANTS))
def test_mutant_applies_to_the_current_source_and_undoes(zid: str) -> None:
    """No stale snippet: every edit finds its text exactly once, and undo restores the code."""
    mutant = MUTANTS[zid]
    import importlib
    modules = {e.module: importlib.import_module(e.module) for e in mutant.edits}
    before = {name: _codes(m) for name, m in modules.items()}
    with mutated(zid):
        assert active() == (zid,)
        during = {name: _codes(m) for name, m in modules.items()}
        assert during != before, f"{zid} changed no code"
    assert {name: _codes(m) for name, m in modules.items()} == before
    assert active() == ()


def _codes(module: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in vars(module).items():
        if getattr(value, "__module__", None) != getattr(module, "__name__", None):
            continue
        if hasattr(value, "__code__"):
            out[name] = value.__code__
        elif isinstance(value, type):
            for attr, member in vars(value).items():
                func = getattr(member, "fget", getattr(member, "__func__", member))
                if hasattr(func, "__code__"):
                    out[f"{name}.{attr}"] = func.__code__
    return out


@machinery
def test_a_mutant_changes_behaviour_for_every_reference() -> None:
    """The code is swapped on the existing function objects: a reference taken before
    (``from x import f``, a bound method) runs the mutant too."""
    fits_alone = scheduler.Scheduler.__init__
    with mutated("Z17"):
        from refimpl.core import RouterConfig, RouterCore
        core = RouterCore(RouterConfig(models=(), models_max=0))
        assert core.scheduler.models_max == 0
        assert fits_alone is scheduler.Scheduler.__init__
    assert RouterCore(RouterConfig(models=(), models_max=0)).scheduler.models_max is None


@machinery
def test_a_stale_mutant_names_its_file_and_snippet() -> None:
    with pytest.raises(StaleMutant, match=r"scheduler\.py.*not found"):
        patch("Z99", [Edit("refimpl.core.scheduler", "no such text anywhere", "x")])
    with pytest.raises(StaleMutant, match=r"found \d+ times"):
        patch("Z99", [Edit("refimpl.core.scheduler", "self.queue", "self.queue")])
    with pytest.raises(StaleMutant, match="module-level code"):
        patch("Z99", [Edit("refimpl.core.scheduler", "from . import errors\n",
                           "from . import errors\nX = 1\n")])


@machinery
def test_unknown_mutant() -> None:
    with pytest.raises(UnknownMutant, match="Z99"):
        apply(["Z99"])


@machinery
def test_mutants_stack_and_undo_in_order() -> None:
    with mutated("Z2"):
        with mutated("Z19"):
            assert active() == ("Z2", "Z19")
            with mutated("Z2"):  # already on: stays on
                assert active() == ("Z2", "Z19")
        assert active() == ("Z2",)
    assert active() == ()


# -- what counts as a catch ------------------------------------------------------------------------


@machinery
def test_the_routers_crash_counts_as_a_violation() -> None:
    [violation] = SCENARIOS["Z14"].violations(["Z14"])
    assert violation.guarantee == "router_survives"


@machinery
def test_a_harness_bug_is_no_catch(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception of the simulator or of the properties propagates: it is not a violation."""
    def broken_play(*args: object, **kwargs: object) -> object:
        raise KeyError("a bug of the harness")

    monkeypatch.setattr(bugzoo, "play", broken_play)
    with pytest.raises(KeyError):
        SCENARIOS["Z14"].violations(["Z14"])


@machinery
def test_router_crashed_tells_the_core_from_the_harness() -> None:
    from refimpl.core import ChildOutput, ModelSpec, RequestArrived, RouterConfig, RouterCore
    from refimpl.core.protocol import STATE_PREFIX
    core = RouterCore(RouterConfig(models=(ModelSpec("a"),), models_max=1))
    core.handle(RequestArrived(1, "a"), 0.0)
    with mutated("Z14"), pytest.raises(RuntimeError) as crash:
        core.handle(ChildOutput(1, STATE_PREFIX + b'{"state": "exploding"}\n'), 1.0)
    assert router_crashed(crash.value)
    try:
        Scenario("X", "an unknown action", SCENARIOS["Z14"].config,
                 ((0.0, "not an action"),), ()).violations()  # type: ignore[arg-type]
    except Exception as exc:  # raised by the simulator, never inside RouterCore.handle
        assert not router_crashed(exc)
    else:
        pytest.fail("the simulator took a string for an action")


# -- a whole process tree ------------------------------------------------------------------------

SHOW = ("from refimpl.core import RouterConfig, RouterCore; "
        "print(RouterCore(RouterConfig(models=(), models_max=0)).scheduler.models_max)")


@machinery
def test_every_python_process_of_the_tree_runs_the_mutant() -> None:
    """The environment makes a process and the processes it starts apply the mutant at start,
    each module as it is imported (nothing imported early)."""
    grandchild = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SHOW!r}])"
    env = environment(["Z17"])
    one = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True,
                         check=True)
    two = subprocess.run([sys.executable, "-c", grandchild], env=env, capture_output=True,
                         text=True, check=True)
    assert (one.stdout, two.stdout) == ("0\n", "0\n")
    early = subprocess.run([sys.executable, "-c", "import sys; print('refimpl' in sys.modules)"],
                           env=env, capture_output=True, text=True, check=True)
    assert early.stdout == "False\n"
    clean = subprocess.run([sys.executable, "-c", SHOW], env=environment([]),
                           capture_output=True, text=True, check=True)
    assert clean.stdout == "None\n"


@machinery
def test_a_mutant_that_cannot_apply_stops_the_process() -> None:
    env = dict(environment(["Z17"]), ROUTER_MUTANT="Z99")
    run = subprocess.run([sys.executable, "-c", "print('ran')"], env=env, capture_output=True,
                         text=True)
    assert run.returncode == 70 and "ran" not in run.stdout, run
    assert "Z99" in run.stderr
