"""Downloads in the core, driven by the simulator: a download child takes no slot, a request for a
model still downloading is served once it is done, and a cancelled or failed download leaves
nothing behind (no files, no model)."""

from __future__ import annotations

import random

import pytest

from properties.invariants import check_all, download_ends_clean, download_takes_no_slot
from properties.mutants import mutated
from refimpl.core.commands import Publish, RemoveFiles, Reply, SendExit, Spawn
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.events import ChildExited, DownloadAsked, LoadAsked, RemoveAsked, UnloadAsked
from refimpl.core.trace import At
from simulator.engine import Simulation
from simulator.faults import Faults

D = "user/D-GGUF:F16"
ONE = RouterConfig(models=(ModelSpec("A", stop_timeout=5.0),), models_max=1)
SLOW = Faults(load_time=(1.0, 1.0), exit_time=(0.1, 0.1), download_time=(4.0, 4.0))


def sim(config: RouterConfig = ONE, faults: Faults = SLOW) -> Simulation:
    s = Simulation(config, None, faults, random.Random(1), duration=0.0, drain=1e9)
    s.start()
    s.run_until(0.0)
    return s


def of(s: Simulation, kind: type, **match: object) -> list[At]:
    assert s.trace is not None
    return [a for a in s.trace if isinstance(a.what, kind)
            and all(getattr(a.what, k) == v for k, v in match.items())]


def statuses(s: Simulation, model: str) -> list[str]:
    out: list[str] = []
    for a in of(s, Publish, model=model, event="status_change"):
        if not out or out[-1] != a.what.data["status"]:  # loading progress repeats "loading"
            out.append(a.what.data["status"])
    return out


def clean(s: Simulation, config: RouterConfig = ONE) -> None:
    assert s.trace is not None
    violations = check_all(s.trace, config)
    assert not violations, "\n".join(map(str, violations))


def test_request_waits_for_the_download_then_loads_once() -> None:
    s = sim()
    call = s.api(DownloadAsked, D)
    assert [a.what.status for a in of(s, Reply, req=call)] == [200]  # answered at once
    req = s.request(D, 0.5)
    s.run_until(2.0)
    assert req in s.open and not of(s, Spawn, model=D, download=False)
    s.run_until(30.0)
    assert req not in s.open and s.summary.ok == 1
    assert statuses(s, D) == ["downloading", "downloaded", "unloaded", "loading", "loaded"]
    assert len(of(s, Spawn, model=D, download=False)) == 1
    assert s.cache == {D: "complete"}
    events = [a.what.event for a in of(s, Publish, model=D)]
    assert "download_finished" in events and events.count("download_progress") >= 30
    clean(s)


def test_a_download_takes_no_slot_and_evicts_nothing() -> None:
    s = sim()
    busy = s.request("A", 60.0)  # A loaded and busy, models_max 1
    s.run_until(2.0)
    s.api(DownloadAsked, D)
    s.run_until(10.0)
    a_child = of(s, Spawn, model="A")[0].what.instance
    assert not of(s, SendExit, instance=a_child) and busy in s.open  # A was not touched
    assert s.core.models[D].status.value == "unloaded" and s.cache == {D: "complete"}
    s.run_until(100.0)
    clean(s)


@pytest.mark.parametrize("how", ["unload", "remove", "fail", "crash"])
def test_a_download_that_does_not_finish_leaves_nothing(how: str) -> None:
    faults = Faults(load_time=(1.0, 1.0), exit_time=(0.1, 0.1), download_time=(4.0, 4.0),
                    download_fail=1.0 if how == "fail" else 0.0)
    s = sim(faults=faults)
    s.api(DownloadAsked, D)
    waiting = s.request(D, 0.5)
    s.run_until(1.0)
    assert s.cache == {D: "partial"}
    call = None
    if how == "unload":
        call = s.api(UnloadAsked, D)
        assert not of(s, Reply, req=call)  # answered once the download child is gone
    elif how == "remove":
        call = s.api(RemoveAsked, D)
    elif how == "crash":
        s.crash(D, 139)
    s.run_until(30.0)
    if call is not None:
        assert [a.what.status for a in of(s, Reply, req=call)] == [200]
    assert s.cache == {}, "partial files left behind"
    assert D not in s.core.models and not s.core.instances
    assert of(s, RemoveFiles, model=D) and of(s, Publish, model=D, event="model_remove")
    assert waiting not in s.open  # it got an error, not silence
    assert [a.what.status for a in of(s, Reply, req=waiting)] in ([503], [404])
    # The name is free again: a second download starts.
    again = s.api(DownloadAsked, D)
    assert [a.what.status for a in of(s, Reply, req=again)] == [200]
    s.run_until(60.0)
    clean(s)


def test_download_of_an_existing_name_is_refused() -> None:
    s = sim()
    for name in ("A", D):
        first = s.api(DownloadAsked, name)
        if name == D:
            assert [a.what.status for a in of(s, Reply, req=first)] == [200]
            first = s.api(DownloadAsked, name)
        replies = of(s, Reply, req=first)
        assert [(a.what.status, a.what.kind) for a in replies] == [(400, "model_already_exists")]


def test_remove_a_loaded_cache_model_stops_it_first() -> None:
    s = sim()
    s.api(DownloadAsked, D)
    s.run_until(10.0)
    s.request(D, 0.5)
    s.run_until(20.0)
    assert s.core.models[D].status.value == "loaded"
    call = s.api(RemoveAsked, D)
    assert not of(s, Reply, req=call) and of(s, SendExit)
    late = s.request(D, 0.5)  # the name no longer resolves
    assert [a.what.status for a in of(s, Reply, req=late)] == [400]
    s.run_until(30.0)
    assert [a.what.status for a in of(s, Reply, req=call)] == [200]
    assert s.cache == {} and D not in s.core.models
    clean(s)


def test_load_asked_while_downloading_loads_when_done() -> None:
    s = sim()
    s.api(DownloadAsked, D)
    s.run_until(1.0)
    call = s.api(LoadAsked, D)
    assert [a.what.status for a in of(s, Reply, req=call)] == [200]
    s.run_until(30.0)
    assert s.core.models[D].status.value == "loaded"
    clean(s)


def test_z15_leaves_the_model_downloaded_and_its_requests_unanswered() -> None:
    config = RouterConfig(models=ONE.models, models_max=1)
    with mutated("Z15"):
        s = sim(config)
        s.api(DownloadAsked, D)
        req = s.request(D, 0.5)
        s.run_until(60.0)
    assert req in s.open and s.core.models[D].status.value == "downloaded"
    assert s.trace is not None and download_ends_clean(s.trace, config)


def test_the_download_checks_can_fail() -> None:
    """Hand-made traces of the two download bugs: each check names it."""
    evicting = [At(0.0, DownloadAsked(1, D)), At(0.0, SendExit(1))]
    assert download_takes_no_slot(evicting, ONE)
    leaky = [At(0.0, DownloadAsked(1, D)), At(0.0, Spawn(2, D, download=True)),
             At(1.0, UnloadAsked(3, D)), At(1.0, SendExit(2)),
             At(1.1, ChildExited(2, 0)),
             At(1.1, Publish(D, "download_failed", {}))]  # no RemoveFiles, no model_remove
    assert download_ends_clean(leaky, ONE)


def test_an_unload_during_a_download_cancels_the_load_asked_for_after_it() -> None:
    """Found by the state machine: the download had finished and its child hung on exit; the
    unload was answered when the child was killed, and the load asked earlier then started it."""
    s = sim(ONE)
    s.api(DownloadAsked, D)
    child = s.child_of(D)
    assert child is not None
    child.hangs = True
    s.api(LoadAsked, D)
    s.run_until(10.0)  # the download is done; its child ignores the exit command
    s.api(UnloadAsked, D)
    s.run_until(100.0)
    assert s.trace is not None and not any(
        isinstance(at.what, Spawn) and at.what.model == D and not at.what.download
        for at in s.trace)
