"""LLAMA_SERVER_DEBUG_FAKE_TIMING, llama-server's router test hook (issue 13): each start of a
child and each routed request held 2 s, as upstream's server-models.cpp holds them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio.testing

from conformance.routers import Router, Target
from refimpl.core.commands import Spawn
from refimpl.router import options
from refimpl.router.debug import FAKE_DELAY, delayed
from refimpl.router.driver import Child


def test_the_hook_is_read_from_the_environment_as_upstream_reads_it() -> None:
    assert options.parse([], env={options.FAKE_TIMING_ENV: "1"}).debug_fake_timing
    assert options.parse([], env={options.FAKE_TIMING_ENV: "0"}).debug_fake_timing  # non-empty
    assert not options.parse([], env={options.FAKE_TIMING_ENV: ""}).debug_fake_timing
    assert not options.parse([], env={}).debug_fake_timing


def test_a_delayed_start_begins_two_seconds_late_in_virtual_time() -> None:
    started: list[float] = []

    async def spawner(command: Spawn) -> Child:
        started.append(anyio.current_time())
        return object()  # type: ignore[return-value]

    async def main() -> float:
        t0 = anyio.current_time()
        await delayed(spawner)(Spawn(1, "a"))
        return t0

    t0 = anyio.run(main, backend="trio",
                   backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)})
    assert started == [t0 + FAKE_DELAY]


def started_at(pid: int) -> float:
    """When ``pid`` started, on CLOCK_BOOTTIME, to the kernel's tick (psutil's create_time adds
    a boot time rounded to the second)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


@pytest.mark.live
def test_under_the_hook_loads_and_requests_are_held_and_a_queued_request_shares_the_load(
        tiny_models: Any, tmp_path: Path) -> None:
    env = ((options.FAKE_TIMING_ENV, "1"),)
    router = Router(Target(None, env=env), ["--models-dir", str(tiny_models.root),
                                            "--models-max", "1"], tmp_path / "router.log")
    try:
        model = tiny_models.names[0]
        sent = time.clock_gettime(time.CLOCK_BOOTTIME)
        first = router.send(model)
        router.events.wait_for(model, "loading")
        second = router.send(model)  # while the start is held: queued behind the same load
        assert first.join()[0] == 200 and second.join()[0] == 200, router.log()
        assert len(router.seen_children) == 1, router.log()  # one load for both
        # the kernel's start time of the child: the start was held
        assert started_at(*router.seen_children) >= sent + FAKE_DELAY - 0.02
        t0 = time.monotonic()
        assert router.chat(model).status_code == 200
        assert time.monotonic() - t0 >= FAKE_DELAY  # routed, then held before it was sent
        assert options.FAKE_TIMING_ENV in router.log()
    finally:
        assert not router.stop()
