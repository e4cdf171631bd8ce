"""A router under test, as a process: its command line (``Target``), its ``/models/sse`` feed
(``Events``), the ``Router`` handle a test drives, and ``HeldRequest``, a request kept in flight at
a stopped child for as long as the test wants.

The conformance tests and the differential tool (``python -m conformance.differential``) both
start routers through this module; the process itself (start, log, ``/models/sse``, children,
stop) is ``conformance.process.RouterProcess``, which ``bench/load.py`` uses too. Linux only: children are found and watched with psutil, and
what psutil does not show (a socket's unread bytes, a process's pending signals, its stdin's
unread bytes) is read from /proc. A router and its children die with the test process
(``fixtures.procs.popen``, the router's own ``die_with_parent``).
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import itertools
import os
import signal
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fixtures.procs import alive, children_of, cmdline
from properties.observed import check_observed
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.router.processes import free_port

from .process import ROOT as ROOT  # re-exported: tests import it from here
from .process import Events as Events
from .process import RouterProcess


@dataclass(frozen=True)
class Target:
    """Which router a run checks: the reference router (with its own children, or with the
    ``child_cmd`` ones), or a llama-server binary in router mode."""

    binary: str | None  # None: the reference router
    child_cmd: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # extra environment, e.g. ROUTER_MUTANT

    @property
    def name(self) -> str:
        """The report's column: ``llama-server``, ``interop`` (ours with other children) or
        ``refimpl``."""
        if self.binary:
            return "llama-server"
        return "interop" if self.child_cmd else "refimpl"

    def command(self, port: int, args: list[str]) -> list[str]:
        if self.binary:
            return [self.binary, "--host", "127.0.0.1", "--port", str(port), *args]
        extra = ["--child-cmd", self.child_cmd] if self.child_cmd else []
        return [sys.executable, "-m", "refimpl", "--host", "127.0.0.1", "--port", str(port),
                *extra, *args]


@dataclass(frozen=True)
class Child:
    """A model's child process, as found under its router."""

    pid: int
    port: int


class Router(RouterProcess):
    """One router process for one test (see ``RouterProcess``), with what tests do to it."""

    def __init__(self, target: Target, args: list[str], log_path: Path,
                 headers: dict[str, str] | None = None) -> None:
        self.held: list[HeldRequest] = []
        self._req = itertools.count(1)
        super().__init__(target.command(free_port(), args), log_path,
                         env=dict(os.environ, **dict(target.env)), headers=headers)
        # A fresh connection per request: llama-server closes a kept-alive connection after a
        # proxied answer without saying so (U3, docs/CONFORMANCE.md), which would fail whichever
        # test's next request raced the close. test_api checks persistent connections itself.
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(120.0, connect=5.0),
                                   limits=httpx.Limits(max_keepalive_connections=0))

    def status(self, model: str) -> str:
        value: str = self.models()[model]["status"]["value"]
        return value

    def wait_status(self, model: str, status: str, timeout: float = 60.0) -> None:
        """Poll ``GET /models`` until ``model`` has ``status``: for changes that may come before
        the SSE subscription (load-on-startup), which ``/models/sse`` does not replay."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.models().get(model, {}).get("status", {}).get("value")
            if seen == status:
                return
            time.sleep(0.05)
        raise AssertionError(f"{model} is {seen}, not {status}, after {timeout} s\n{self.log()}")

    def chat(self, model: str, content: str = "hi", max_tokens: int = 4, **extra: Any
             ) -> httpx.Response:
        return self.client.post("/v1/chat/completions", headers=self.headers, json={
            "model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, **extra})

    def tracked(self, model: str, max_tokens: int = 4, stream: bool = False,
                timeout: float = 120.0, sent: threading.Event | None = None) -> tuple[int, str]:
        """A chat request recorded in the observed trace: (status, body or error text).

        ``sent`` is set once the whole request has been written to the router's socket."""
        req = next(self._req)
        self.note("send", req=req, model=model)
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": max_tokens, "stream": stream}

        def trace(name: str, info: dict[str, Any]) -> None:
            if sent is not None and name == "http11.send_request_body.complete":
                sent.set()

        try:
            with httpx.Client(base_url=self.url, headers=self.headers,
                              timeout=httpx.Timeout(timeout, connect=5.0)) as client, \
                    client.stream("POST", "/v1/chat/completions", json=body,
                                  extensions={"trace": trace}) as r:
                self.note("answer", req=req, model=model, status=r.status_code)
                text = r.read().decode(errors="replace")
                ok = r.status_code < 400 and (not stream or "[DONE]" in text)
                if r.status_code < 400:
                    self.note("end", req=req, ok=ok)
                return r.status_code, text
        except httpx.HTTPError as exc:
            self.note("answer", req=req, model=model, status=599, message=str(exc))
            return 599, str(exc)

    def send(self, model: str, **kwargs: Any) -> InFlight:
        """:meth:`tracked` on a thread of its own; returns once the router has *read* the
        request (it was written whole, and no connection to the router holds unread bytes), so
        the router knows of it before the test's next step: the way to order requests, or to
        queue one behind a held request, without waiting for time to pass."""
        flight = InFlight(self, model, kwargs)
        flight.wait_read()
        return flight

    def child(self, model_path: Path | str) -> Child:
        """The running child whose command line loads ``model_path`` (its pid and its port)."""
        wanted = str(model_path)
        for pid in children_of(self.proc.pid):
            argv = cmdline(pid)
            if wanted in argv and "--port" in argv:
                return Child(pid, int(argv[argv.index("--port") + 1]))
        raise AssertionError(f"no child process for {model_path}")

    def hold(self, model: str, model_path: Path | str) -> HeldRequest:
        """Send a streamed request for ``model`` (running) and keep it in flight at its child
        until :meth:`HeldRequest.release`; see :class:`HeldRequest`."""
        held = HeldRequest(self, self.child(model_path), model)
        self.held.append(held)
        held.start()
        return held

    def check(self, models_max: int) -> None:
        """The invariants on what this test saw (once the late SSE events have arrived)."""
        self.caught_up()
        names = tuple(self.models())
        config = RouterConfig(models=tuple(ModelSpec(n) for n in names), models_max=models_max)
        with self.events.lock:
            violations = check_observed(self.observed, config)
        assert not violations, "\n".join(map(str, violations)) + "\n" + self.log()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> list[int]:
        """Let held children go on, then stop the router (``RouterProcess.stop``)."""
        for held in self.held:
            held.resume()
        self.client.close()
        return super().stop(sig)


class InFlight:
    """A tracked request on a thread of its own (``Router.send``)."""

    def __init__(self, router: Router, model: str, kwargs: dict[str, Any]) -> None:
        self.router = router
        self.model = model
        self.result: tuple[int, str] | None = None
        self.sent = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(kwargs,), daemon=True)
        self.thread.start()

    def _run(self, kwargs: dict[str, Any]) -> None:
        self.result = self.router.tracked(self.model, sent=self.sent, **kwargs)

    def wait_read(self, timeout: float = 30.0) -> None:
        """Until the router has read this request: sent whole, nothing left unread."""
        deadline = time.monotonic() + timeout
        while not self.sent.wait(0.05):
            if self.result is not None:  # it failed before it was sent
                return
            assert time.monotonic() < deadline, \
                f"the request for {self.model} was never sent\n{self.router.log()}"
        while _unread_request(self.router.port):
            assert time.monotonic() < deadline, \
                f"the router never read the request for {self.model}\n{self.router.log()}"
            time.sleep(0.005)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float = 120.0) -> tuple[int, str]:
        self.thread.join(timeout)
        assert self.result is not None, f"the request for {self.model} never ended"
        return self.result


class HeldRequest:
    """A streamed chat request kept in flight for as long as a test wants, whatever the speed of
    the child: a busy model that cannot stop being busy early on a fast machine.

    The model's child is stopped (SIGSTOP) first; the request is then sent through the router and
    waits, unread, in the child's socket (its receive queue in /proc/net/tcp), so the router has
    routed it and holds its reference to the model. Nothing is generated until :meth:`release`
    continues the child (SIGCONT); then the answer streams to the end. Meanwhile
    :meth:`told_to_stop` says whether the router asked the child to exit, which a stopped child
    cannot act on: the exit command unread on its stdin, a signal pending, or the child gone.
    """

    def __init__(self, router: Router, child: Child, model: str) -> None:
        self.router = router
        self.child = child
        self.model = model
        self.result: tuple[int, str] | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        self.result = self.router.tracked(self.model, max_tokens=8, stream=True)

    def start(self, timeout: float = 30.0) -> None:
        os.kill(self.child.pid, signal.SIGSTOP)
        self._stopped = True
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not _unread_request(self.child.port):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"the request for {self.model} never reached its child "
                                     f"(pid {self.child.pid}, port {self.child.port}): "
                                     f"{self.result}\n{self.router.log()}")
            time.sleep(0.01)

    def told_to_stop(self) -> str | None:
        """Why the router is ending this child (held, it cannot comply yet), or None."""
        if not alive(self.child.pid):
            return "the child exited"
        pending = _pending_signals(self.child.pid) & {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        if pending:
            return f"signal {', '.join(s.name for s in sorted(pending))} pending"
        unread = _unread_stdin(self.child.pid)
        if unread:
            return f"{unread} bytes (the exit command) waiting on its stdin"
        return None

    def kill(self) -> None:
        """SIGKILL the held child: it dies with the request in flight (noted as a crash)."""
        self.router.note("crash", model=self.model)
        os.kill(self.child.pid, signal.SIGKILL)

    def resume(self) -> None:
        if self._stopped:
            self._stopped = False
            try:
                os.kill(self.child.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def release(self, timeout: float = 120.0) -> tuple[int, str]:
        """Let the child go on; wait for the answer's end: (status, body or error text)."""
        self.resume()
        self._thread.join(timeout)
        assert self.result is not None, f"the held request for {self.model} never ended"
        return self.result


def _unread_request(port: int) -> bool:
    """True when an established connection to ``port`` holds bytes its owner has not read.
    (psutil lists connections but not their queues: /proc/net/tcp has them.)"""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port \
                    and int(queues.split(":")[1], 16) > 0:
                return True
    return False


def _pending_signals(pid: int) -> set[signal.Signals]:
    """Signals sent to ``pid`` and not yet delivered (/proc: psutil does not show them)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    mask = 0
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            mask |= int(line.split()[1], 16)
    return {s for s in signal.Signals if mask & (1 << (s.value - 1))}


_PIDFD_GETFD = 438  # the same syscall number on every Linux architecture


def _unread_stdin(pid: int) -> int:
    """Bytes waiting unread on a process's stdin (a pipe or a socket pair), via a duplicate of its
    fd 0 (pidfd_getfd, Linux 5.6+; a parent's right over its descendants). 0 when unknown."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return 0
    try:
        fd = ctypes.CDLL(None, use_errno=True).syscall(_PIDFD_GETFD, pidfd, 0, 0)
        if fd < 0:
            return 0
        try:
            count = array.array("i", [0])
            fcntl.ioctl(fd, termios.FIONREAD, count)
            return count[0]
        except OSError:
            return 0
        finally:
            os.close(fd)
    finally:
        os.close(pidfd)
