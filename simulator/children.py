"""Simulated child processes: they speak the real line protocol, in random chunks, and misbehave
as the fault plan says. They are fakes for the simulator only; the live router runs real ones."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from refimpl.core.events import ChildExited, ChildOutput, ResponseEnded
from refimpl.core.protocol import (MAX_LINE, STATE_PREFIX, DownloadProgress, DownloadResult,
                                   LoadingState, Progress, ReadyState, SleepingState,
                                   format_message)

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

    def sleep_now(self) -> bool:
        """Report ``sleeping`` now if idle and ready (as ``--sleep-idle-seconds`` would)."""
        if not self.alive or self.exiting or not self.ready or self.sleeping or self.inflight:
            return False
        self.idle_token += 1
        self.sleeping = True
        self.write(self.sim.now, format_message(SleepingState()))
        return True

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


class SimDownloadChild(SimChild):
    """A simulated download child: progress every 100 ms of virtual time, then the result, then
    it waits for the exit command (as upstream's does). The exit command before the result
    cancels the download: it reports failure and exits. Its files are in ``sim.cache``."""

    TOTAL = 1_000_000

    def start(self) -> None:
        now, rng, f = self.sim.now, self.rng, self.faults
        duration = rng.uniform(*f.download_time)
        fails = self._fault(f.download_fail)
        end = now + (rng.uniform(0.0, duration) if fails else duration)
        url = f"http://127.0.0.1/{self.model}/resolve/main/model.gguf"
        steps = max(1, int(duration / 0.1))
        for i in range(steps + 1):
            t = now + duration * i / steps
            if t > end:
                break
            done = self.TOTAL * i // steps
            self.sim.at(t, self._progress, DownloadProgress(url, done, self.TOTAL))
        self.sim.cache[self.model] = "partial"
        self.sim.at(end, self._result, not fails)

    def _progress(self, msg: DownloadProgress) -> None:
        if self.alive and not self.exiting and not self.ready:
            self.write(self.sim.now, format_message(msg))

    def _result(self, ok: bool) -> None:
        if not self.alive or self.exiting or self.ready:
            return
        self.ready = True  # its work is over, whatever the result
        if ok:
            self.sim.cache[self.model] = "complete"
        self.write(self.sim.now, format_message(DownloadResult(ok)))

    def exit_command(self) -> None:
        if self.exiting or not self.alive:
            return
        if not self.ready:  # cancelled: it says so, then exits
            self.ready = True
            self.write(self.sim.now, format_message(DownloadResult(False)))
        super().exit_command()

    def serve(self, req: int, service: float) -> None:  # pragma: no cover - never forwarded to
        self.sim.at(self.sim.now, self.sim.deliver, ResponseEnded(req, ok=False))
