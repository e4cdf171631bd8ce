"""Simulated child processes: they speak the real line protocol, in random chunks, and misbehave
as the fault plan says. They are fakes for the simulator only; the live router runs real ones."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from refimpl.core.events import ChildExited, ChildOutput, ResponseEnded
from refimpl.core.protocol import (MAX_LINE, STATE_PREFIX, LoadingState, Progress, ReadyState,
                                   SleepingState, format_message)

from .faults import Faults

if TYPE_CHECKING:
    from .engine import Simulation

STAGES = ("text_model",)


class SimChild:
    """One simulated ``llama-server`` child for ``model``, known to the core as ``instance``."""

    def __init__(self, sim: Simulation, instance: int, model: str) -> None:
        self.sim = sim
        self.instance = instance
        self.model = model
        self.rng: random.Random = sim.rng
        self.faults: Faults = sim.faults
        self.alive = True
        self.ready = False
        self.sleeping = False
        self.exiting = False  # got the exit command
        self.inflight: set[int] = set()
        self.idle_token = 0  # bumped on activity; a sleep timer with an old token is stale
        self.hangs = self._fault(self.faults.hang_on_exit)

    def _fault(self, p: float) -> bool:
        return p > 0.0 and self.sim.now < self.faults.until and self.rng.random() < p

    # -- output --------------------------------------------------------------------------------

    def write(self, t: float, line: bytes) -> None:
        """Write one line at time ``t``, delivered to the router in random chunks."""
        if self._fault(self.faults.garbage):
            self._write_raw(t, self.rng.randbytes(self.rng.randrange(1, 64)) + b"\n")
            self._write_raw(t, STATE_PREFIX + b'{"state": "ready", "payload": ' + b"\n")
        if self._fault(self.faults.overlong):
            self._write_raw(t, STATE_PREFIX + b"x" * (MAX_LINE + 1) + b"\n")
        if self._fault(self.faults.unknown_state):
            self._write_raw(t, STATE_PREFIX + b'{"state": "exploding", "payload": {}}\n')
        self._write_raw(t, line)

    def _write_raw(self, t: float, data: bytes) -> None:
        rng = self.sim.chunk_rng
        while data:
            cut = rng.randrange(1, len(data) + 1) if rng.random() < 0.5 else len(data)
            self.sim.at(t, self._emit, data[:cut])
            data = data[cut:]

    def write_raw_now(self, data: bytes) -> None:
        self._write_raw(self.sim.now, data)

    def _emit(self, chunk: bytes) -> None:
        if self.alive:
            self.sim.deliver(ChildOutput(self.instance, chunk))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        now, rng, f = self.sim.now, self.rng, self.faults
        load = rng.uniform(*f.load_time)
        self.write(now, format_message(LoadingState()))
        for frac in (0.25, 0.5, 0.75):
            progress = LoadingState(Progress(STAGES, STAGES[0], frac))
            self.write(now + frac * load, format_message(progress))
        if self._fault(f.crash_loading):
            self.sim.at(now + rng.uniform(0.0, load), self._exit, 1)
        self.sim.at(now + load, self._ready, None)

    def _ready(self, _: None) -> None:
        if not self.alive:
            return
        self.ready = True
        info = {"id": self.model, "object": "model", "owned_by": "llamacpp"}
        self.write(self.sim.now, format_message(ReadyState(info)))
        if self._fault(self.faults.crash_idle):
            self.sim.at(self.sim.now + self.rng.expovariate(1 / 30.0), self._exit, 134)
        self._arm_sleep()

    def _arm_sleep(self) -> None:
        if self.faults.sleep_idle is not None and not self.inflight:
            self.idle_token += 1
            self.sim.at(self.sim.now + self.faults.sleep_idle, self._sleep, self.idle_token)

    def _sleep(self, token: int) -> None:
        if self.alive and not self.exiting and token == self.idle_token and not self.inflight:
            self.sleeping = True
            self.write(self.sim.now, format_message(SleepingState()))

    def serve(self, req: int, service: float) -> None:
        """A forwarded request: answer it after ``service`` seconds (waking up first if asleep)."""
        sim = self.sim
        if not self.alive or self.exiting or not self.ready:
            sim.at(sim.now, sim.deliver, ResponseEnded(req, ok=False))
            return
        self.idle_token += 1
        start = sim.now
        if self.sleeping:
            self.sleeping = False
            start += self.rng.uniform(*self.faults.wake_time)
            self.write(start, format_message(ReadyState({})))
        self.inflight.add(req)
        if self._fault(self.faults.crash_serving):
            sim.at(start + self.rng.uniform(0.0, service), self._exit, 139)
        sim.at(start + service, self._answer, req)

    def _answer(self, req: int) -> None:
        if self.alive and req in self.inflight:
            self.inflight.discard(req)
            self.sim.deliver(ResponseEnded(req, ok=True))
            self._arm_sleep()

    def cancel(self, req: int) -> None:
        """The client went away: the child stops working on its request."""
        self.inflight.discard(req)
        self._arm_sleep()

    def exit_command(self) -> None:
        if self.exiting or not self.alive:
            return
        self.exiting = True
        if not self.hangs:
            self.sim.at(self.sim.now + self.rng.uniform(*self.faults.exit_time), self._exit, 0)

    def kill(self) -> None:
        self.sim.at(self.sim.now, self._exit, -9)

    def crash(self, code: int) -> None:
        self._exit(code)

    def _exit(self, code: int) -> None:
        if not self.alive:
            return
        self.alive = False
        for req in sorted(self.inflight):
            self.sim.deliver(ResponseEnded(req, ok=False))
        self.inflight.clear()
        self.sim.deliver(ChildExited(self.instance, code))
