"""The thin async driver around the core: it feeds events in and carries commands out.

It owns what the core may not touch: child processes, the clock, timers, the SSE subscribers and
the HTTP requests waiting for a decision. Everything it knows about scheduling it asks the core.
Written against anyio only, so it runs on asyncio (the HTTP server) and on trio (the tests that
check stop timeouts and force kills in virtual time with trio's MockClock).
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from refimpl.core.commands import (Command, Forward, Kill, Listed, Log, ModelView, Publish, Reply,
                                   SendExit, Spawn)
from refimpl.core.config import ModelSpec
from refimpl.core.events import (CatalogChanged, ChildExited, ChildOutput, ChildStarted,
                                 ClientGone, DownloadAsked, Event, ListAsked, LoadAsked,
                                 RemoveAsked,
                                 RequestArrived, ResponseEnded, RouterStarted, TimerFired,
                                 UnloadAsked)
from refimpl.core.protocol import EXIT_COMMAND
from refimpl.core.router import RouterCore
from refimpl.core.trace import At

from .loglimit import LogLimit, cut
from .tracefile import TraceWriter

# What a log line may not carry as it is: C0 and C1 controls but the tab (a newline would forge a
# line, an escape sequence would drive the reader's terminal) and the Unicode line separators.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``, ``\\u2028``), so that a
    model name, a child's output or anything a client sent is one log line whatever it holds.
    Backslashes stay as they are, so escaping twice is escaping once. The router's log function
    (``main.log``) and the driver's own logging pass every line through it."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    c = match[0]
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


class Child(Protocol):
    """A running child process, as the driver sees it (real or, in tests, in memory)."""

    port: int

    @property
    def pid(self) -> int: ...

    async def read(self) -> bytes:
        """The next chunk of stdout; b"" at EOF."""

    async def write_stdin(self, data: bytes) -> None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


SSE_BUFFER = 256  # events a /models/sse subscriber may fall behind before it is dropped
Spawner = Callable[[Spawn], Awaitable[Child]]  # what the core asked for -> a started child
ApiCall = type[LoadAsked] | type[UnloadAsked] | type[DownloadAsked] | type[RemoveAsked]


@dataclass
class Outcome:
    """What the core decided for one request: go to a child, or an answer."""

    forward: Forward | None = None
    reply: Reply | None = None


@dataclass
class _Pending:
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: Outcome = field(default_factory=Outcome)


class Driver:
    def __init__(self, core: RouterCore, spawner: Spawner, *, record: bool = False,
                 log: Callable[[str], None] | None = None,
                 download_spawner: Spawner | None = None,
                 on_command: Callable[[Command], None] | None = None) -> None:
        self.core = core
        self.spawner = spawner
        self.download_spawner = download_spawner
        # Told of every command after it is carried out: the app keeps its model table and the
        # cache in step with downloads and removals (RemoveFiles is done there).
        self.on_command = on_command
        self.children: dict[int, Child] = {}
        # Spawned children whose spawner has not returned yet, with the stops (SendExit, Kill)
        # the core asked for meanwhile: carried out as soon as the child is there, or a child
        # unloaded while it starts would run for ever (found by simulator/whole.py).
        self._starting: dict[int, list[SendExit | Kill]] = {}
        self._forwarded: set[int] = set()  # requests forwarded whose response has not ended
        self.ids = itertools.count(1)
        # a list, or where ``--trace`` writes it (tracefile.TraceWriter)
        self.trace: list[At] | TraceWriter | None = [] if record else None
        self._pending: dict[int, _Pending] = {}
        self._subscribers: set[MemoryObjectSendStream[dict[str, Any]]] = set()
        # subscribers dropped for falling SSE_BUFFER events behind, until they unsubscribe
        self.overflowed: set[MemoryObjectSendStream[dict[str, Any]]] = set()
        self._log_limits: dict[int, LogLimit] = {}  # per child instance
        self._wake = anyio.Event()
        self._tg: TaskGroup | None = None
        self.log = log or (lambda line: print(printable(line), file=sys.stderr, flush=True))
        self.spawn_failures: list[str] = []
        self.closing = anyio.Event()  # set at shutdown: long-lived streams end

    # -- running ---------------------------------------------------------------------------------

    async def run(self, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: the timer loop and every child's reader live in this task group."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._timer_loop)
            self.feed(RouterStarted())
            task_status.started()

    def feed(self, event: Event) -> list[Command]:
        """Hand one event to the core now and carry out what it asks. Never awaits."""
        now = anyio.current_time()
        commands = self.core.handle(event, now)
        if self.trace is not None:
            self.trace.append(At(now, event))
            self.trace.extend(At(now, c) for c in commands)
        for command in commands:
            self._execute(command)
            if self.on_command is not None:
                self.on_command(command)
        self._wake.set()
        return commands

    def _execute(self, command: Command) -> None:
        assert self._tg is not None, "Driver.run() is not running"
        if isinstance(command, (Forward, Reply)):
            if isinstance(command, Forward):
                self._forwarded.add(command.req)
            pending = self._pending.get(command.req)
            if pending is not None:
                if isinstance(command, Forward):
                    pending.outcome.forward = command
                else:
                    pending.outcome.reply = command
                pending.done.set()
        elif isinstance(command, Spawn):
            self._starting[command.instance] = []
            self._tg.start_soon(self._run_child, command)
        elif isinstance(command, (SendExit, Kill)):
            child = self.children.get(command.instance)
            if child is None:
                self._starting.get(command.instance, []).append(command)
            elif isinstance(command, SendExit):
                self._tg.start_soon(self._send_exit, child)
            else:
                child.kill()
        elif isinstance(command, Publish):
            message = {"model": command.model, "event": command.event, "data": command.data}
            for subscriber in list(self._subscribers):
                try:
                    subscriber.send_nowait(message)
                except anyio.WouldBlock:
                    # Too slow: its stream ends after what it has buffered, with a last event
                    # saying so (app.py ``sse``), so that it reconnects rather than waits.
                    self._subscribers.discard(subscriber)
                    self.overflowed.add(subscriber)
                    subscriber.close()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._subscribers.discard(subscriber)  # gone
        elif isinstance(command, Log):
            # A child's output, bounded per child (loglimit.py): a flood is counted, not logged.
            limit = self._log_limits.setdefault(command.instance, LogLimit())
            if limit.take(len(command.text), anyio.current_time()):
                child = self.children.get(command.instance)
                prefix = f"[{child.port if child else command.instance}]"
                summary = limit.summary()
                if summary is not None:
                    self.log(f"{prefix} [router] {summary}")
                self.log(f"{prefix} {printable(cut(command.text))}")

    async def _send_exit(self, child: Child) -> None:
        try:
            await child.write_stdin(EXIT_COMMAND)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # it is already gone: its exit is on the way

    async def _run_child(self, spawn: Spawn) -> None:
        instance, model = spawn.instance, spawn.model
        try:
            spawner = self.download_spawner if spawn.download else self.spawner
            if spawner is None:
                raise RuntimeError("this router has no download child command")
            child = await spawner(spawn)
        except Exception as exc:  # noqa: BLE001 - any failure to start is the child's exit
            self._starting.pop(instance, None)
            self.log(f"[router] could not start a child for {model}: {exc}")
            self.spawn_failures.append(f"{model}: {exc}")
            self.feed(ChildExited(instance, 127))
            return
        self.children[instance] = child
        self.feed(ChildStarted(instance, f"127.0.0.1:{child.port}"))
        for stop in self._starting.pop(instance, []):
            self._execute(stop)
        try:
            last = b""
            while True:
                data = await child.read()
                if not data:
                    break
                last = data
                self.feed(ChildOutput(instance, data))
            if last and not last.endswith(b"\n"):
                # EOF ends the last line (ROUTER.md 2) now, not when the child exits: a child
                # may close its output and keep running (tests/test_faults.py, no-newline).
                self.feed(ChildOutput(instance, b"\n"))
            code = await child.wait()
        finally:
            self.children.pop(instance, None)
            limit = self._log_limits.pop(instance, None)
            summary = limit.summary() if limit is not None else None
            if summary is not None:
                self.log(f"[{child.port}] [router] {summary}")
        self.feed(ChildExited(instance, code))

    async def _timer_loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            deadline = self.core.next_timer()
            if deadline is None:
                await self._wake.wait()
                continue
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await self._wake.wait()
            if anyio.current_time() >= deadline:
                self.feed(TimerFired())

    # -- what the HTTP layer asks ----------------------------------------------------------------

    async def route(self, model: str | None, autoload: bool | None,
                    client_gone: Callable[[], Awaitable[bool]] | None = None) -> tuple[int, Outcome]:
        """Ask the core where a request goes; wait (queued) until it decides. If the client goes
        away meanwhile, the core is told and a ``Reply`` of 499 is returned."""
        req = next(self.ids)
        pending = self._pending[req] = _Pending()
        try:
            self.feed(RequestArrived(req, model, autoload))
            if not pending.done.is_set():
                await self._wait(pending, req, client_gone)
            return req, pending.outcome
        finally:
            del self._pending[req]

    async def _wait(self, pending: _Pending, req: int,
                    client_gone: Callable[[], Awaitable[bool]] | None) -> None:
        if client_gone is None:
            await pending.done.wait()
            return
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                while not await client_gone():
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            tg.start_soon(watch)
            await pending.done.wait()
            tg.cancel_scope.cancel()
        if not pending.done.is_set():
            self.feed(ClientGone(req))
            pending.outcome.reply = Reply(req, 499, "client_gone", "client closed the request")

    def ended(self, req: int, ok: bool) -> None:
        """The proxied response of ``req`` ended; said once, however often it is called."""
        if req in self._forwarded:
            self._forwarded.discard(req)
            self.feed(ResponseEnded(req, ok))

    def api(self, kind: type[LoadAsked] | type[UnloadAsked] | type[DownloadAsked],
            model: str) -> Reply:
        """An API call the core answers at once (load, download; unload of a model child)."""
        req = next(self.ids)
        pending = self._pending[req] = _Pending()
        try:
            self.feed(kind(req, model))
            assert pending.outcome.reply is not None, "the core answers this call at once"
            return pending.outcome.reply
        finally:
            del self._pending[req]

    def change_catalog(self, specs: tuple[ModelSpec, ...], removed: tuple[str, ...],
                       reload: bool = False) -> Reply:
        """Tell the core what the model sources say now (``reload``: all they say); it answers
        at once (400 and no change when a name or alias would belong to two models)."""
        req = next(self.ids)
        pending = self._pending[req] = _Pending()
        try:
            self.feed(CatalogChanged(specs, removed, req, reload))
            assert pending.outcome.reply is not None, "the core answers this call at once"
            return pending.outcome.reply
        finally:
            del self._pending[req]

    async def call(self, kind: ApiCall, model: str) -> Reply:
        """An API call that may be answered later: an unload that cancels a download, or a
        removal, is answered once the child is gone."""
        req = next(self.ids)
        pending = self._pending[req] = _Pending()
        try:
            self.feed(kind(req, model))
            await pending.done.wait()
            assert pending.outcome.reply is not None
            return pending.outcome.reply
        finally:
            del self._pending[req]

    def start_soon(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``fn`` in the driver's task group: a task that outlives the HTTP handler that
        started it (app.py, swap notices: a route that goes on while the answer streams)."""
        assert self._tg is not None, "Driver.run() is not running"
        self._tg.start_soon(fn)

    def subscribe(self) -> tuple[MemoryObjectSendStream[dict[str, Any]], Any]:
        """A new ``/models/sse`` subscriber: it sees events from now on, no replay."""
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](SSE_BUFFER)
        self._subscribers.add(send)
        return send, receive

    def unsubscribe(self, send: MemoryObjectSendStream[dict[str, Any]]) -> None:
        self._subscribers.discard(send)
        self.overflowed.discard(send)
        send.close()

    def listing(self) -> tuple[ModelView, ...]:
        """``GET /models``: what the core lists, asked as an event (the trace records it)."""
        req = next(self.ids)
        for command in self.feed(ListAsked(req)):
            if isinstance(command, Listed):
                return command.models
        raise AssertionError("the core answers ListAsked at once")  # pragma: no cover

    def close_streams(self) -> None:
        """End every ``/models/sse`` stream, so that a graceful HTTP shutdown need not wait."""
        self.closing.set()
        for send in list(self._subscribers):
            self.unsubscribe(send)

    async def shutdown(self, grace: float) -> None:
        """Ask every child to exit; kill those still alive after ``grace`` seconds."""
        self.close_streams()
        for child in list(self.children.values()):
            await self._send_exit(child)
        with anyio.move_on_after(grace):
            while self.children:
                await anyio.sleep(0.02)
        for child in list(self.children.values()):
            child.kill()
        with anyio.move_on_after(5.0):
            while self.children:
                await anyio.sleep(0.02)
