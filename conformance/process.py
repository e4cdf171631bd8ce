"""One router process, seen from outside: the one harness that the conformance tests
(``conformance.routers.Router``), the differential tool and the benchmarks (``bench/load.py``)
start routers with.

``RouterProcess`` starts the router with its command line (its stdout and stderr to a log file),
dies with the test process (``fixtures.procs.popen``), waits until ``/health`` answers, subscribes
to ``/models/sse`` and records each message (``Events``, and the status changes in an
``Observed`` trace for the invariants), watches the router's child processes (every one ever
seen, and the most alive at once), and stops it: a signal, then every child it ever had must be
gone; any left is killed by pid and returned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fixtures.procs import alive, children_of, popen, wait_gone, wait_healthy
from properties.observed import Observed

from .plugin import CHECKOUT as CHECKOUT  # re-exported, with ROOT: where the harness lies
from .plugin import ROOT as ROOT

WATCH_EVERY = 0.05  # seconds between two looks at the router's children


@dataclass
class Events:
    """``/models/sse`` as a client sees it: (seconds since start, message) pairs."""

    items: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def statuses(self, model: str) -> list[str]:
        with self.lock:
            return [m["data"].get("status") for _, m in self.items
                    if m.get("model") == model and "status" in m.get("data", {})]

    def wait_for(self, model: str, status: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if status in self.statuses(model):
                return
            time.sleep(0.02)
        raise AssertionError(f"{model} never became {status}; saw {self.statuses(model)}")


class RouterProcess:
    """A router started from ``command`` (which names its ``--port``), ready once constructed:
    healthy and, with ``sse``, subscribed to ``/models/sse`` (there is no replay, so the
    subscription comes before anything the caller does)."""

    def __init__(self, command: list[str], log_path: Path, *, env: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, sse: bool = True) -> None:
        self.command = command
        self.headers = headers or {}
        self.port = int(command[command.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc: subprocess.Popen[bytes] = popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=ROOT if CHECKOUT else None, start_new_session=True,
            env=dict(os.environ) if env is None else env)
        self.seen_children: set[int] = set()
        self.peak_children = 0  # the most child processes alive at one look
        self.child_samples = 0
        self.stop_seconds = 0.0
        self.events = Events()
        self.observed = Observed()
        self.t0 = time.monotonic()
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._watch_children, daemon=True)
        self._watch.start()
        try:
            why = wait_healthy(self.url, self.proc)
            if why is not None:
                raise AssertionError(f"router {why}:\n{self.log()}")
            self.t0 = time.monotonic()
            if sse:
                self._subscribed = threading.Event()
                threading.Thread(target=self._listen, daemon=True).start()
                # The reference router subscribes before it answers /models/sse, so its
                # response headers mean subscribed.
                if not self._subscribed.wait(30):
                    raise AssertionError(f"/models/sse never answered:\n{self.log()}")
        except BaseException:
            RouterProcess.stop(self)
            raise

    def _watch_children(self) -> None:
        while not self._stopping.is_set():
            kids = children_of(self.proc.pid)
            self.seen_children |= kids
            self.peak_children = max(self.peak_children, sum(1 for p in kids if alive(p)))
            self.child_samples += 1
            time.sleep(WATCH_EVERY)

    def _listen(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(None, connect=5.0)) as c, \
                    c.stream("GET", self.url + "/models/sse", headers=self.headers) as r:
                self._subscribed.set()
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        message = json.loads(line[6:])
                        t = time.monotonic() - self.t0
                        with self.events.lock:
                            self.events.items.append((t, message))
                            if "status" in message.get("data", {}):
                                self.observed.add(t, "sse", model=message["model"],
                                                  data=message["data"])
        except (httpx.HTTPError, ValueError):
            pass

    def log(self) -> str:
        """The last 5000 characters of the router's log."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, kind: str, **data: Any) -> None:
        """Record a client's action or answer (``send``, ``answer``, ``unload``, ``crash``) in
        the observed trace, in order with the ``/models/sse`` messages."""
        with self.events.lock:
            self.observed.add(self.now(), kind, **data)

    def models(self) -> dict[str, dict[str, Any]]:
        """``GET /models``, by model name."""
        data = httpx.get(self.url + "/models", headers=self.headers,
                         timeout=httpx.Timeout(60.0, connect=5.0)).json()["data"]
        return {m["id"]: m for m in data}

    def caught_up(self, timeout: float = 10.0) -> None:
        """Wait until ``/models/sse`` has caught up with ``GET /models``: every model that has
        status events has its current status as its last one. A router whose models keep
        changing (sleep and wake) may never settle; after ``timeout`` this returns anyway."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = {name: m.get("status", {}).get("value") for name, m in self.models().items()}
            if all(not seen or seen[-1] == now[name]
                   for name in now if (seen := [s for s in self.events.statuses(name) if s])):
                return
            time.sleep(0.02)

    def peak_memory_kib(self) -> int:
        """The router's peak resident size (VmHWM) so far, from /proc (psutil has the current
        size only); 0 once it is gone."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> list[int]:
        """Send ``sig`` (SIGKILL after 30 s), then wait up to 15 s for every child the router
        ever had to be gone; kill those left by pid and return their pids."""
        self.seen_children |= children_of(self.proc.pid)
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._stopping.set()
        self._watch.join(timeout=2)
        leftovers = wait_gone(self.seen_children, timeout=15)
        self.stop_seconds = time.monotonic() - started
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        return leftovers
