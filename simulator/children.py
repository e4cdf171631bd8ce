"""Simulated child processes: they speak the real line protocol, in random chunks, and misbehave
as the fault plan says. They are fakes for the simulators only; the live router runs real ones.

Both simulators run these children: ``engine.Simulation`` (an event heap) and ``whole.WholeWorld``
(trio in virtual time) each are the :class:`ChildHost` a child lives in.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Protocol

from refimpl.core.events import ChildExited, ChildOutput, Event, ResponseEnded
from refimpl.core.protocol import (MAX_LINE, STATE_PREFIX, DownloadProgress, DownloadResult,
                                   LoadingState, Progress, ReadyState, SleepingState,
                                   format_message)

from .faults import Faults

STAGES = ("text_model",)


class DownloadFiles(Protocol):
    """Where a download child's files go: ``files[model] = "partial"`` when it starts writing
    them, ``"complete"`` once they are all there."""

    def __setitem__(self, model: str, files: str, /) -> None: ...


class ChildHost(Protocol):
    """The world a simulated child lives in: its clock, its random draws and fault plan, a way
    to act later, and the router, which hears what the child says and does."""

    @property
    def now(self) -> float: ...

    @property
    def rng(self) -> random.Random:
        """Load times, faults, waits: everything the child draws but how its output is cut."""

    @property
    def chunk_rng(self) -> random.Random:
        """How the child's output is cut into reads."""

    @property
    def faults(self) -> Faults: ...

    @property
    def cache(self) -> DownloadFiles: ...

    def at(self, t: float, fn: Callable[[Any], object], arg: Any) -> None:
        """Call ``fn(arg)`` at virtual time ``t``; calls due at the same time run in the order
        they were asked for."""

    def deliver(self, event: Event) -> object:
        """What the child did, for the router: ``ChildOutput`` (bytes on its stdout),
        ``ChildExited`` (it ended) and ``ResponseEnded`` (an answer it was giving is over)."""


class SimChild:
    """One simulated ``llama-server`` child for ``model``, known to the router as ``instance``.
    With ``ignore_stdin``, the odds that it never reads its stdin (the exit command)."""

    def __init__(self, host: ChildHost, instance: int, model: str, *,
                 ignore_stdin: float = 0.0) -> None:
        self.host = host
        self.instance = instance
        self.model = model
        self.rng: random.Random = host.rng
        self.faults: Faults = host.faults
        self.alive = True
        self.ready = False
        self.sleeping = False
        self.exiting = False  # got the exit command
        self.inflight: set[int] = set()
        self.idle_token = 0  # bumped on activity; a sleep timer with an old token is stale
        self.hangs = self._fault(self.faults.hang_on_exit)
        self.deaf = self._fault(ignore_stdin)

    def _fault(self, p: float) -> bool:
        return p > 0.0 and self.host.now < self.faults.until and self.rng.random() < p

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
        rng = self.host.chunk_rng
        while data:
            cut = rng.randrange(1, len(data) + 1) if rng.random() < 0.5 else len(data)
            self.host.at(t, self._emit, data[:cut])
            data = data[cut:]

    def write_raw_now(self, data: bytes) -> None:
        self._write_raw(self.host.now, data)

    def _emit(self, chunk: bytes) -> None:
        if self.alive:
            self.host.deliver(ChildOutput(self.instance, chunk))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        now, rng, f = self.host.now, self.rng, self.faults
        load = rng.uniform(*f.load_time)
        self.write(now, format_message(LoadingState()))
        for frac in (0.25, 0.5, 0.75):
            progress = LoadingState(Progress(STAGES, STAGES[0], frac))
            self.write(now + frac * load, format_message(progress))
        if self._fault(f.crash_loading):
            self.host.at(now + rng.uniform(0.0, load), self._exit, 1)
        self.host.at(now + load, self._ready, None)

    def _ready(self, _: None) -> None:
        if not self.alive:
            return
        self.ready = True
        info = {"id": self.model, "object": "model", "owned_by": "llamacpp"}
        self.write(self.host.now, format_message(ReadyState(info)))
        if self._fault(self.faults.crash_idle):
            self.host.at(self.host.now + self.rng.expovariate(1 / 30.0), self._exit, 134)
        self._arm_sleep()

    def _arm_sleep(self) -> None:
        if self.faults.sleep_idle is not None and not self.inflight:
            self.idle_token += 1
            self.host.at(self.host.now + self.faults.sleep_idle, self._sleep, self.idle_token)

    def _sleep(self, token: int) -> None:
        if self.alive and not self.exiting and token == self.idle_token and not self.inflight:
            self.sleeping = True
            self.write(self.host.now, format_message(SleepingState()))

    def sleep_now(self) -> bool:
        """Report ``sleeping`` now if idle and ready (as ``--sleep-idle-seconds`` would)."""
        if not self.alive or self.exiting or not self.ready or self.sleeping or self.inflight:
            return False
        self.idle_token += 1
        self.sleeping = True
        self.write(self.host.now, format_message(SleepingState()))
        return True

    def serve(self, req: int, service: float) -> float:
        """A forwarded request: answer it after ``service`` seconds (waking up first if asleep).
        Returns when it starts on it; the answer is a ``ResponseEnded`` for ``req``."""
        host = self.host
        if not self.alive or self.exiting or not self.ready:
            host.at(host.now, host.deliver, ResponseEnded(req, ok=False))
            return host.now
        self.idle_token += 1
        start = host.now
        if self.sleeping:
            self.sleeping = False
            start += self.rng.uniform(*self.faults.wake_time)
            self.write(start, format_message(ReadyState({})))
        self.inflight.add(req)
        if self._fault(self.faults.crash_serving):
            host.at(start + self.rng.uniform(0.0, service), self._exit, 139)
        host.at(start + service, self._answer, req)
        return start

    def _answer(self, req: int) -> None:
        if self.alive and req in self.inflight:
            self.inflight.discard(req)
            self.host.deliver(ResponseEnded(req, ok=True))
            self._arm_sleep()

    def cancel(self, req: int) -> None:
        """The client went away: the child stops working on its request."""
        self.inflight.discard(req)
        self._arm_sleep()

    def exit_command(self) -> None:
        """The exit command on its stdin: it exits a little later (unless it hangs)."""
        if self.exiting or not self.alive or self.deaf:
            return
        self.exiting = True
        if not self.hangs:
            self.host.at(self.host.now + self.rng.uniform(*self.faults.exit_time), self._exit, 0)

    def kill(self) -> None:
        self.host.at(self.host.now, self._exit, -9)

    def crash(self, code: int) -> None:
        self._exit(code)

    def _exit(self, code: int) -> None:
        if not self.alive:
            return
        self.alive = False
        for req in sorted(self.inflight):
            self.host.deliver(ResponseEnded(req, ok=False))
        self.inflight.clear()
        self.host.deliver(ChildExited(self.instance, code))


class SimDownloadChild(SimChild):
    """A simulated download child: progress every 100 ms of virtual time, then the result, then
    it waits for the exit command (as upstream's does). The exit command before the result
    cancels the download: it reports failure and exits. Its files are in ``host.cache``."""

    TOTAL = 1_000_000

    def start(self) -> None:
        now, rng, f = self.host.now, self.rng, self.faults
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
            self.host.at(t, self._progress, DownloadProgress(url, done, self.TOTAL))
        self.host.cache[self.model] = "partial"
        self.host.at(end, self._result, not fails)

    def _progress(self, msg: DownloadProgress) -> None:
        if self.alive and not self.exiting and not self.ready:
            self.write(self.host.now, format_message(msg))

    def _result(self, ok: bool) -> None:
        if not self.alive or self.exiting or self.ready:
            return
        self.ready = True  # its work is over, whatever the result
        if ok:
            self.host.cache[self.model] = "complete"
        self.write(self.host.now, format_message(DownloadResult(ok)))

    def exit_command(self) -> None:
        if self.exiting or not self.alive or self.deaf:
            return
        if not self.ready:  # cancelled: it says so, then exits
            self.ready = True
            self.write(self.host.now, format_message(DownloadResult(False)))
        super().exit_command()

    def serve(self, req: int, service: float) -> float:  # pragma: no cover - never forwarded to
        self.host.at(self.host.now, self.host.deliver, ResponseEnded(req, ok=False))
        return self.host.now
