"""The async driver with FAKE in-memory children, on asyncio and on trio.

On trio the tests run under ``MockClock(autojump_threshold=0)``: time jumps whenever every task
waits, so a 10-second stop timeout takes no real time and the kill lands exactly on time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from properties.invariants import check_all
from refimpl.core.commands import Kill, SendExit, Spawn
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.events import ChildExited, LoadAsked, UnloadAsked
from refimpl.core.protocol import (EXIT_COMMAND, LoadingState, ReadyState, SleepingState,
                                   format_message)
from refimpl.core.router import RouterCore
from refimpl.router.driver import Driver

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "trio":
        trio_testing = pytest.importorskip("trio.testing")
        return ("trio", {"clock": trio_testing.MockClock(autojump_threshold=0)})
    return "asyncio"


@pytest.fixture
def s(anyio_backend: Any) -> float:
    """One test second: real seconds cost real time on asyncio, so there they are shorter."""
    return 1.0 if anyio_backend != "asyncio" else 0.05


@dataclass
class FakeChild:
    """An in-memory child: loads for ``load`` seconds, then says ready; exits on the exit
    command unless it hangs. A fake for driver tests only."""

    port: int
    pid: int
    load: float = 0.5
    hangs: bool = False
    sleep_after: float | None = None
    code: int | None = None
    stdin: list[bytes] = field(default_factory=list)
    exited: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[bytes](100)

    async def life(self) -> None:
        self._send.send_nowait(format_message(LoadingState()))
        await anyio.sleep(self.load)
        if self.code is None:
            self._send.send_nowait(format_message(ReadyState({"id": "m"})))
        if self.sleep_after is not None:
            await anyio.sleep(self.sleep_after)
            if self.code is None:
                self._send.send_nowait(format_message(SleepingState()))

    async def read(self) -> bytes:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return b""

    async def write_stdin(self, data: bytes) -> None:
        self.stdin.append(data)
        if data == EXIT_COMMAND and not self.hangs:
            await anyio.sleep(self.load / 5)
            self._exit(0)

    def kill(self) -> None:
        self._exit(-9)

    def _exit(self, code: int) -> None:
        if self.code is None:
            self.code = code
            self._send.close()
            self.exited.set()

    async def wait(self) -> int:
        await self.exited.wait()
        assert self.code is not None
        return self.code


class Harness:
    def __init__(self, config: RouterConfig, **child: Any) -> None:
        self.children: dict[int, FakeChild] = {}
        self.child_options = child
        self.driver = Driver(RouterCore(config), self.spawn, record=True, log=lambda line: None)
        self.tg: Any = None

    async def spawn(self, command: Spawn) -> FakeChild:
        instance = command.instance
        child = FakeChild(port=9000 + instance, pid=1000 + instance, **self.child_options)
        self.children[instance] = child
        assert self.tg is not None
        self.tg.start_soon(child.life)
        return child

    async def settle(self) -> None:
        """Let the driver see every exit that has happened (bounded)."""
        with anyio.move_on_after(5.0):
            while any(c.code is not None for c in self.children.values()) and \
                    any(i in self.driver.children for i, c in self.children.items()
                        if c.code is not None):
                await anyio.sleep(0.01)

    def check(self) -> None:
        assert self.driver.trace is not None
        violations = check_all(self.driver.trace, self.driver.core.config)
        assert not violations, "\n".join(map(str, violations))


def config(models_max: int = 1, stop_timeout: float = 10.0) -> RouterConfig:
    return RouterConfig(models=(ModelSpec("a", stop_timeout=stop_timeout),
                                ModelSpec("b", stop_timeout=stop_timeout)), models_max=models_max)


async def test_request_loads_then_is_forwarded(s: float) -> None:
    h = Harness(config(), load=0.5 * s)
    async with anyio.create_task_group() as tg:
        h.tg = tg
        await tg.start(h.driver.run)
        start = anyio.current_time()
        req, outcome = await h.driver.route("a", None)
        assert outcome.forward is not None and outcome.forward.instance == 1
        assert anyio.current_time() - start >= 0.5 * s  # it waited for the load
        h.driver.ended(req, ok=True)
        tg.cancel_scope.cancel()
    h.check()


async def test_hanging_child_is_killed_after_the_stop_timeout(s: float) -> None:
    h = Harness(config(stop_timeout=10.0 * s), hangs=True, load=0.5 * s)
    async with anyio.create_task_group() as tg:
        h.tg = tg
        await tg.start(h.driver.run)
        req, _ = await h.driver.route("a", None)
        h.driver.ended(req, ok=True)
        asked = anyio.current_time()
        assert h.driver.api(UnloadAsked, "a").status == 200
        await h.children[1].exited.wait()
        waited = anyio.current_time() - asked
        await h.settle()
        tg.cancel_scope.cancel()
    assert h.children[1].stdin == [EXIT_COMMAND] and h.children[1].code == -9
    assert h.driver.trace is not None
    kills = [a for a in h.driver.trace if isinstance(a.what, Kill)]
    sends = [a for a in h.driver.trace if isinstance(a.what, SendExit)]
    assert len(kills) == 1 and len(sends) == 1
    assert kills[0].t - sends[0].t == pytest.approx(10.0 * s, abs=0.05)
    assert waited == pytest.approx(10.0 * s, abs=0.2)
    h.check()


async def test_unloading_a_loading_child_kills_it_at_once(s: float) -> None:
    h = Harness(config(stop_timeout=10.0 * s), load=30.0 * s)
    async with anyio.create_task_group() as tg:
        h.tg = tg
        await tg.start(h.driver.run)
        assert h.driver.api(LoadAsked, "a").status == 200
        await anyio.sleep(1.0 * s)
        asked = anyio.current_time()
        h.driver.api(UnloadAsked, "a")
        await h.children[1].exited.wait()
        assert anyio.current_time() - asked < 0.5 * s
        await h.settle()
        tg.cancel_scope.cancel()
    assert h.children[1].code == -9 and h.children[1].stdin == []
    h.check()


async def test_idle_child_sleeps_and_a_request_still_goes_to_it(s: float) -> None:
    h = Harness(config(), sleep_after=5.0 * s, load=0.5 * s)
    async with anyio.create_task_group() as tg:
        h.tg = tg
        await tg.start(h.driver.run)
        req, _ = await h.driver.route("a", None)
        h.driver.ended(req, ok=True)
        await anyio.sleep(6.0 * s)
        assert h.driver.core.models["a"].status.value == "sleeping"
        req, outcome = await h.driver.route("a", None)
        assert outcome.forward is not None and outcome.forward.instance == 1
        h.driver.ended(req, ok=True)
        tg.cancel_scope.cancel()
    h.check()


async def test_queued_client_that_leaves_costs_nobody_their_slot(s: float) -> None:
    h = Harness(config(), load=1.0 * s)
    gone = False

    async def client_gone() -> bool:
        return gone

    async with anyio.create_task_group() as tg:
        h.tg = tg
        await tg.start(h.driver.run)
        req_a, _ = await h.driver.route("a", None)  # a is busy from now on
        results: list[Any] = []

        async def wait_for_b() -> None:
            results.append(await h.driver.route("b", None, client_gone))

        tg.start_soon(wait_for_b)
        await anyio.sleep(2.0 * s)
        gone = True
        await anyio.sleep(max(0.5 * s, 0.2))
        assert results and results[0][1].reply is not None and results[0][1].reply.status == 499
        assert not h.driver.core.scheduler.queue
        h.driver.ended(req_a, ok=True)
        tg.cancel_scope.cancel()
    h.check()


async def test_shutdown_asks_then_kills_and_leaves_no_child(s: float) -> None:
    h = Harness(config(models_max=2), load=0.5 * s)
    h.child_options["hangs"] = False
    async with anyio.create_task_group() as tg:
        h.tg = tg
        await tg.start(h.driver.run)
        for model in ("a", "b"):
            req, _ = await h.driver.route(model, None)
            h.driver.ended(req, ok=True)
        h.children[2].hangs = True
        await h.driver.shutdown(grace=3.0 * s)
        tg.cancel_scope.cancel()
    assert h.children[1].code == 0 and h.children[2].code == -9
    assert not h.driver.children


async def test_a_child_that_cannot_start_ends_as_a_failed_load() -> None:
    async def broken(instance: int, model: str) -> FakeChild:
        raise OSError("no such program")

    driver = Driver(RouterCore(config()), broken, record=True, log=lambda line: None)
    async with anyio.create_task_group() as tg:
        await tg.start(driver.run)
        _, outcome = await driver.route("a", None)
        tg.cancel_scope.cancel()
    assert outcome.reply is not None and outcome.reply.status == 503
    assert driver.trace is not None
    assert any(isinstance(a.what, ChildExited) and a.what.code == 127 for a in driver.trace)
