"""The whole router under simulation: the real ``Driver`` and the real ``RouterApp`` in virtual time.

As FoundationDB does, the router's own code runs as it runs in production, here under trio with
``MockClock(autojump_threshold=0)``, and only the world is fake:

- child processes (``SimProcess``, the driver's ``Child`` protocol): they speak the real line
  protocol in random chunks, and start late, load slowly, crash, hang on exit or ignore stdin;
- the children's HTTP (``ChildNetwork``, in-memory connections for the proxy's own HTTP/1.1
  client, which runs as in production): latency, refused connections, requests failed with no
  answer, answers broken off when the child dies or stopped when the router closes the connection;
- the clients (``call``): a streaming ASGI caller, as uvicorn calls the app, that can disconnect
  at any point.

A :class:`Program` says what the clients and the chaos monkey do and when; its ``seed`` draws
everything else, trio's scheduling order included, so one program replays one run exactly
(``run_program(eval(repr(program)))``). The driver's trace is checked with every invariant of
``properties/invariants.py``, and what the clients saw with the checks of :func:`whole_checks`.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import random
import re
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Union

import anyio
import anyio.abc
import httpx
import trio
import trio.testing
from trio._core import _run as trio_run  # the scheduler's shuffle, seeded per run

from properties.invariants import check_all
from refimpl.cache import list_cached
from refimpl.core.commands import Spawn
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.events import ChildExited, ChildOutput, Event, ResponseEnded
from refimpl.core.protocol import EXIT_COMMAND
from refimpl.core.router import RouterCore
from refimpl.core.trace import At
from refimpl.router.app import RouterApp
from refimpl.router.driver import Driver
from refimpl.router.options import RouterOptions
from refimpl.router.processes import ChildProcess
from refimpl.router.sources import ModelEntry, card_of

from .children import SimChild, SimDownloadChild
from .faults import FAULT_PRESETS, Faults

CALL_HEADER = "x-sim-call"  # names a client's call, so that what reached a child is matched
PID_BASE = 10_000_000  # above any pid_max: a simulated pid is never a real process
# The header names and values uvicorn will not write (uvicorn.protocols.http.httptools_impl).
_HEADER_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_HEADER_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


# -- the program ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Chat:
    """``POST /v1/chat/completions`` for ``model``; ``body`` replaces the JSON body (odd bodies);
    the client disconnects ``leave`` virtual seconds after it sent the request (None: never)."""

    model: str
    stream: bool = False
    leave: float | None = None
    body: str | None = None
    tokens: int = 4  # a stream's length: each token takes uniform(0, service) seconds
    after: float = 0.0


@dataclass(frozen=True, slots=True)
class Get:
    """``GET {path}?model=...&{extra}``; ``path`` is sent as it is (``/props%00``)."""

    path: str
    model: str
    extra: str = ""
    leave: float | None = None
    after: float = 0.0


@dataclass(frozen=True, slots=True)
class Load:
    model: str
    after: float = 0.0


@dataclass(frozen=True, slots=True)
class Unload:
    model: str
    after: float = 0.0


@dataclass(frozen=True, slots=True)
class Reload:
    """The sources change, then ``GET /models?reload=1``: ``change`` is ``"flags"`` (the model's
    flags change: a running child is stale), ``"remove"`` (it vanishes) or ``"restore"``."""

    model: str
    change: str = "flags"
    after: float = 0.0


@dataclass(frozen=True, slots=True)
class Crash:
    """The newest live child of ``model`` dies with ``code``."""

    model: str
    code: int = 137
    after: float = 0.0


@dataclass(frozen=True, slots=True)
class Download:
    """``POST /models {"model": model}``: ``user/repo[:TAG]``, looked up on the simulated hub
    (``HUB``); the download child fills the run's cache folder."""

    model: str
    after: float = 0.0


@dataclass(frozen=True, slots=True)
class Remove:
    """``DELETE /models?model=...``."""

    model: str
    after: float = 0.0


@dataclass(frozen=True, slots=True)
class Watch:
    """``GET /models/sse`` for ``leave`` seconds."""

    leave: float = 1.0
    after: float = 0.0


Action = Union[Chat, Get, Load, Unload, Reload, Crash, Download, Remove, Watch]
# The simulated hub: a repo's file names.
HUB: dict[str, list[str]] = {"tiny/x-GGUF": ["x-Q8_0.gguf", "x-F16.gguf"]}
COMMIT = "0" * 40


@dataclass(frozen=True, slots=True)
class World:
    """What the world is like: the models and limits, the children's faults (a preset name of
    ``simulator.faults``), and the odds of what the live seams add: spawning late or failing,
    ignoring stdin, the children's HTTP refusing a connection, and its latency."""

    models: tuple[str, ...] = ("a", "b")
    models_max: int = 1
    faults: str = "none"
    spawn_delay: float = 0.0  # each spawn takes uniform(0, spawn_delay) virtual seconds
    spawn_fail: float = 0.0
    ignore_stdin: float = 0.0
    http_fail: float = 0.0
    odd_headers: float = 0.0  # a child's answer carries a header value with a DEL in it
    latency: float = 0.002  # each HTTP exchange with a child takes uniform(0, latency)
    stop_timeout: float = 2.0
    service: float = 0.3  # a completion takes uniform(0, service); a stream's token too
    settle: float = 120.0  # after the last step: every call must be over by then
    quiet: float = 10.0  # ... and the router may not be idle that long while some are open
    max_trace: int = 50_000  # a router that does more than this is running away (a spin)


@dataclass(frozen=True, slots=True)
class Program:
    """What happens, in order: each step starts ``after`` seconds after the one before it (and
    runs alongside the others). ``seed`` draws the rest: the children's timings and faults, how
    their output is cut, and the order in which trio runs tasks that are ready together."""

    steps: tuple[Action, ...]
    world: World = World()
    seed: int = 0

    def replay(self) -> str:
        """Python that replays this run."""
        return f"from simulator.whole import *\nrun_program({self!r}).check()"


# -- what happened -------------------------------------------------------------------------------

@dataclass
class Exchange:
    """One client call as the client saw it."""

    id: int
    method: str
    target: str  # raw path and query, as sent
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False
    left: bool = False  # the client disconnected
    raised: str | None = None  # the app raised out of the ASGI call (uvicorn: a 500 and a log)
    started: float = 0.0
    ended: float | None = None


@dataclass
class Seen:
    """What a child received for one call."""

    call: int
    method: str
    path: bytes  # decoded (percent-escapes undone)
    query: bytes  # decoded


@dataclass
class Run:
    program: Program
    trace: list[At]
    config: RouterConfig
    exchanges: list[Exchange]
    seen: dict[int, Seen]
    log: list[str]
    end: float
    misuse: list[str] = field(default_factory=list)
    runaway: bool = False  # the trace passed ``max_trace`` entries: the run was cut there

    def violations(self) -> list[str]:
        if self.runaway:  # a cut trace: what it shows is the runaway
            return whole_checks(self)
        out = [str(v) for v in check_all(self.trace, self.config)]
        return out + whole_checks(self)

    def check(self) -> None:
        problems = self.violations()
        if problems:
            raise AssertionError(
                "the whole-router simulation broke a guarantee:\n  " + "\n  ".join(problems[:10])
                + f"\nreplay it with:\n{self.program.replay()}\n(seed {self.program.seed})")


def whole_checks(run: Run) -> list[str]:
    """What a client sees: every call answered (or left), never by an exception of the router's
    own, no header twice (Z20), and a proxied call reaches the child with its path and query
    (Z21); and the driver never kills a child it has reaped (Z16's driver half)."""
    out: list[str] = [f"child_misuse: {m}" for m in run.misuse]
    if run.runaway:
        tail = "; ".join(repr(at) for at in run.trace[-3:])
        out.append(f"runaway: the router did more than {run.program.world.max_trace} things "
                   f"(a loop that never waits, or a thrash); the last: {tail}")
    for ex in run.exchanges:
        name = f"call {ex.id} ({ex.method} {ex.target})"
        if ex.raised is not None:
            out.append(f"router_error: {name} raised {ex.raised} out of the app")
        elif ex.status == 500:
            out.append(f"router_error: {name} answered 500: {bytes(ex.body)[:200]!r}")
        if not ex.complete and not ex.left and ex.raised is None:
            out.append(f"unanswered: {name} (sent t={ex.started:.6g}) had no complete answer "
                       f"by t={run.end:.6g} (status {ex.status})")
        names = [k.lower() for k, _ in ex.headers]
        twice = sorted({k.decode() for k in names if names.count(k) > 1})
        if twice:
            out.append(f"headers_once: {name}: {', '.join(twice)} sent more than once")
        seen = run.seen.get(ex.id)
        if seen is not None:
            raw_path, _, query = ex.target.partition("?")
            sent = (ex.method, urllib.parse.unquote_to_bytes(raw_path),
                    urllib.parse.unquote_to_bytes(query))
            if (seen.method, seen.path, seen.query) != sent:
                out.append(f"proxy_faithful: {name} reached the child as {seen.method} "
                           f"{seen.path!r} ?{seen.query!r}")
    return out


# -- the world: children -------------------------------------------------------------------------

class SimProcess:
    """A simulated child process: the driver's ``Child`` (stdout, stdin, kill, wait) and the HTTP
    server the proxy reaches on its port. What it does (what it writes and when, its faults,
    sleeping, waking, exiting) is its ``life``: a child of ``simulator.children``, as the engine
    runs, with the world as its host."""

    def __init__(self, world: WholeWorld, life: SimChild) -> None:
        self.world = world
        self.life = life
        self.instance = life.instance
        self.model = life.model
        self.port = 20_000 + life.instance
        self._pid = PID_BASE + life.instance
        self._send, self._receive = trio.open_memory_channel[bytes](math.inf)
        self.code: int | None = None
        self.dead = trio.Event()
        self.reaped = False  # wait() has returned its exit code
        self.process = SimPopen(self)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def alive(self) -> bool:
        return self.life.alive

    # the driver's side
    async def read(self) -> bytes:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def write_stdin(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if not self.life.alive:
            raise BrokenPipeError("the child has exited")
        if data == EXIT_COMMAND:
            self.life.exit_command()

    def kill(self) -> None:
        """The real ``ChildProcess.kill`` over this process's ``SimPopen``: its guard against a
        reaped pid is production code, and any ``os.kill`` it sends reaches ``World.signal``."""
        if self.reaped:  # the driver's half of Z16: it forgets a child as it reaps it
            self.world.misuse.append(f"instance {self.instance} ({self.model}) was killed after "
                                     f"it was reaped")
        ChildProcess.kill(self)  # type: ignore[arg-type]

    async def wait(self) -> int:
        await self.dead.wait()
        assert self.code is not None
        self.reaped = True
        self.process.returncode = self.code  # as Popen.wait() sets it
        return self.code

    # what its life does, as the world delivers it
    def output(self, chunk: bytes) -> None:
        self._send.send_nowait(chunk)

    def exited(self, code: int) -> None:
        self.code = code
        self._send.close()
        self.dead.set()

    # its HTTP server
    async def serve(self, request: httpx.Request, call: int) -> httpx.Response:
        world = self.world
        body = await request.aread()
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = {}
        if not self.life.ready:  # the router never forwards before the child said it was ready
            world.misuse.append(f"instance {self.instance} ({self.model}) got a request "
                                f"before it said it was ready")
            return _json(503, {"error": {"code": 503, "message": "Loading model",
                                         "type": "unavailable_error"}})
        odd = [("x-odd", "a\x7fb")] if world.chance(world.config.odd_headers) else []
        if isinstance(parsed, dict) and parsed.get("stream") is True:
            tokens = parsed.get("max_tokens", 4)
            count = tokens if isinstance(tokens, int) and 0 < tokens <= 1000 else 4
            delays = [world.rng.uniform(0.0, world.config.service) for _ in range(count)]
            answer = world.answer(self.life, sum(delays))
            try:
                await answer.until(answer.start, request)  # it wakes up first, if asleep
            except BaseException:
                answer.drop()
                raise
            return httpx.Response(200, headers=[("content-type", "text/event-stream"),
                                                ("connection", "keep-alive"),
                                                ("transfer-encoding", "chunked"), *odd],
                                  stream=_Tokens(answer, request, delays))
        answer = world.answer(self.life, world.rng.uniform(0.0, world.config.service))
        try:
            await answer.until(math.inf, request)
        finally:
            answer.drop()
        return _json(200, {"path": request.url.path, "query": request.url.query.decode(),
                           "model": self.model, "call": call}, odd)


class SimPopen:
    """What ``ChildProcess.kill`` reads of a ``subprocess.Popen``: the pid, the return code once
    reaped, and ``kill()``."""

    def __init__(self, owner: SimProcess) -> None:
        self.owner = owner
        self.pid = owner.pid
        self.returncode: int | None = None

    def kill(self) -> None:
        if self.returncode is None:  # as Popen.send_signal: never signal a reaped pid
            self.owner.life.kill()


class _Answer:
    """An answer a child is giving: its life works on it as request ``req`` from ``start`` on,
    and it is over when the life delivers ``ResponseEnded`` for it."""

    def __init__(self, life: SimChild, req: int, pending: dict[int, _Answer]) -> None:
        self.life = life
        self.req = req
        self.pending = pending  # the world's answers not over yet
        self.start = 0.0
        self.ok = False
        self.over = trio.Event()

    def end(self, ok: bool) -> None:
        self.ok = ok
        self.over.set()

    async def until(self, t: float, request: httpx.Request) -> None:
        """Wait until virtual time ``t``; the answer breaks off if the child failed it."""
        with trio.move_on_at(t):
            await self.over.wait()
        if self.over.is_set() and not self.ok:
            raise httpx.ReadError("the child broke off its answer", request=request)

    def drop(self) -> None:
        """Nobody reads the answer any more: if it is not over, the child stops working on it
        (the router's client left)."""
        if self.pending.pop(self.req, None) is not None:
            self.life.cancel(self.req)


def _json(status: int, value: Any, extra: list[tuple[str, str]] = []) -> httpx.Response:
    content = json.dumps(value).encode()
    return httpx.Response(status, headers=[("content-type", "application/json"),
                                           ("content-length", str(len(content))),
                                           ("connection", "keep-alive"),
                                           ("server", "llama.cpp"),
                                           ("access-control-allow-origin", "*"), *extra],
                          content=content)


class _Tokens(httpx.AsyncByteStream):
    """A streamed completion: a token after each of ``delays`` seconds, then ``[DONE]`` once the
    answer is over; broken off if the child fails it."""

    def __init__(self, answer: _Answer, request: httpx.Request, delays: list[float]) -> None:
        self.answer = answer
        self.request = request
        self.delays = delays

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            t = self.answer.start
            for i, delay in enumerate(self.delays):
                t += delay
                await self.answer.until(t, self.request)
                yield b'data: {"choices": [{"delta": {"content": "t%d"}}]}\n\n' % i
            await self.answer.until(math.inf, self.request)
            yield b"data: [DONE]\n\n"
        finally:
            await self.aclose()

    async def aclose(self) -> None:  # the stream is over, or the router closed it
        self.answer.drop()


class _CacheFolder:
    """The run's cache folder, as download children fill it: a model's files appear there, as
    the hub's cache lays them out, once its download is complete."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __setitem__(self, model: str, files: str, /) -> None:
        if files != "complete":
            return
        repo, _, tag = model.partition(":")
        snapshot = self.path / f"models--{repo.replace('/', '--')}" / "snapshots" / COMMIT
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot.parent.parent / "refs").mkdir(exist_ok=True)
        (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
        (snapshot / f"x-{tag}.gguf").write_bytes(b"GGUF")


class _Pipe(anyio.abc.ByteStream):
    """One end of an in-memory connection: bytes sent arrive at the other end in the same
    pieces; closing one end is end of stream for the other."""

    def __init__(self, out: Any, into: Any) -> None:
        self._out = out
        self._into = into
        self._left = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._left:
            try:
                self._left = await self._into.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise anyio.EndOfStream from None
        data, self._left = self._left[:max_bytes], self._left[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        try:
            await self._out.send(bytes(item))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise anyio.BrokenResourceError from None

    async def send_eof(self) -> None:
        await self._out.aclose()

    async def aclose(self) -> None:
        await self._out.aclose()
        await self._into.aclose()


def _pipe() -> tuple[_Pipe, _Pipe]:
    a_out, b_in = anyio.create_memory_object_stream[bytes](math.inf)
    b_out, a_in = anyio.create_memory_object_stream[bytes](math.inf)
    return _Pipe(a_out, a_in), _Pipe(b_out, b_in)


class ChildNetwork:
    """The children's HTTP, in memory: the proxy's connections (its ``connect``) to
    ``127.0.0.1:PORT`` reach the live child on that port, or are refused. Each request on a
    connection takes some latency, and may fail (the connection closes with no answer); a
    connection the router closes stops the answer the child was giving on it."""

    def __init__(self, world: WholeWorld) -> None:
        self.world = world
        self.nursery: trio.Nursery | None = None

    async def connect(self, host: str, port: int) -> anyio.abc.ByteStream:
        world = self.world
        child = world.by_port.get(port)
        if child is None or not child.alive:
            raise ConnectionRefusedError(f"connection to {host}:{port} refused")
        near, far = _pipe()
        assert self.nursery is not None, "the world runs"
        self.nursery.start_soon(self._serve, port, far)
        return near

    async def _serve(self, port: int, conn: _Pipe) -> None:
        """One connection, HTTP/1.1, as long as the router keeps it."""
        world = self.world
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    buffer += await conn.receive()
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                line, *fields = head.split(b"\r\n")
                method, target, _ = line.split(b" ", 2)
                headers: list[tuple[bytes, bytes]] = []
                for field_ in fields:
                    name, _, value = field_.partition(b": ")
                    headers.append((name, value))
                length = int(dict(headers).get(b"content-length", b"0"))
                while len(buffer) < length:
                    buffer += await conn.receive()
                body, buffer = buffer[:length], buffer[length:]
                await trio.sleep(world.rng.uniform(0.0, world.config.latency))
                child = world.by_port.get(port)
                if child is None or not child.alive or world.chance(world.config.http_fail):
                    return  # closed with no answer
                request = httpx.Request(method.decode(), f"http://127.0.0.1:{port}"
                                        f"{target.decode('latin-1')}", headers=headers,
                                        content=body)
                call = int(request.headers.get(CALL_HEADER, "0"))
                if call:
                    path, _, query = request.url.raw_path.partition(b"?")
                    world.seen[call] = Seen(call, request.method,
                                            urllib.parse.unquote_to_bytes(path),
                                            urllib.parse.unquote_to_bytes(query))
                complete = False  # unless the answer is written whole
                with trio.CancelScope() as answering:
                    async def closed() -> None:  # the router left: the answer stops
                        nonlocal buffer
                        try:
                            while True:
                                buffer += await conn.receive()
                        except anyio.EndOfStream:
                            answering.cancel()

                    async with trio.open_nursery() as watch:
                        watch.start_soon(closed)
                        complete = await self._answer(child, request, call, conn)
                        watch.cancel_scope.cancel()
                if not complete:
                    return
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()

    async def _answer(self, child: SimProcess, request: httpx.Request, call: int,
                      conn: _Pipe) -> bool:
        """The child's answer written to ``conn``; False when it broke off (or the router left)
        and the connection is to be closed."""
        try:
            response = await child.serve(request, call)
        except httpx.ReadError:  # broken off before its head
            return False
        try:
            head = [b"HTTP/1.1 %d %s\r\n" % (response.status_code,
                                              response.reason_phrase.encode())]
            sized = "content-length" in response.headers
            for name, value in response.headers.raw:
                head.append(name + b": " + value + b"\r\n")
            head.append(b"\r\n")
            await conn.send(b"".join(head))
            try:
                async for chunk in response.stream:  # type: ignore[union-attr]
                    if chunk:
                        await conn.send(chunk if sized else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except httpx.ReadError:
                return False
            if not sized:
                await conn.send(b"0\r\n\r\n")
            return True
        except anyio.BrokenResourceError:  # the router closed the connection
            return False
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()


# -- the world: clients --------------------------------------------------------------------------

async def call(app: Any, ex: Exchange, body: bytes, leave: float | None,
               headers: list[tuple[bytes, bytes]] = []) -> None:
    """One HTTP call of a client, made the way uvicorn calls the app (ASGI 2.3): the body in one
    message, then ``http.disconnect`` once the response is complete or the client has left.
    The client leaves ``leave`` seconds after sending (None: never); what it got is in ``ex``."""
    raw_path, _, query = ex.target.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": ex.method, "scheme": "http",
             "path": urllib.parse.unquote(raw_path), "raw_path": raw_path.encode(),
             "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8080"), (CALL_HEADER.encode(), b"%d" % ex.id),
                         (b"content-length", b"%d" % len(body)), *headers],
             "client": ("127.0.0.1", 40000 + ex.id), "server": ("127.0.0.1", 8080)}
    over = trio.Event()  # the response is complete or the client has left
    unread = [body]
    ex.started = trio.current_time()

    async def receive() -> dict[str, Any]:
        if unread and not ex.left:
            return {"type": "http.request", "body": unread.pop(), "more_body": False}
        await over.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if ex.left:
            return  # as uvicorn: writes to a closed connection go nowhere
        if message["type"] == "http.response.start":
            for name, value in message.get("headers", []):  # what uvicorn refuses to write
                if _HEADER_NAME.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if _HEADER_VALUE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
            ex.status = message["status"]
            ex.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            ex.body += message.get("body", b"")
            if not message.get("more_body", False):
                ex.complete = True
                ex.ended = trio.current_time()
                over.set()

    async def leaving(seconds: float) -> None:
        await trio.sleep(seconds)
        if not ex.complete:
            ex.left = True
            ex.ended = trio.current_time()
            over.set()

    async with trio.open_nursery() as nursery:
        if leave is not None:
            nursery.start_soon(leaving, leave)
        try:
            await app(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - uvicorn logs it and answers 500: a router bug
            ex.raised = f"{type(exc).__name__}: {exc}"
            if ex.status is None:
                ex.status = 500
        nursery.cancel_scope.cancel()


# -- the world as a whole ------------------------------------------------------------------------

class WholeWorld:
    """One run: the real router (driver, app) and the fake world around it, which is the
    children's ``ChildHost``: what they schedule runs in trio, what they do reaches their
    processes and the answers they give."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.config = program.world
        self.faults: Faults = FAULT_PRESETS[self.config.faults]
        self.rng = random.Random(program.seed)
        self.chunk_rng = random.Random(program.seed + 1)
        self.by_port: dict[int, SimProcess] = {}
        self.by_instance: dict[int, SimProcess] = {}
        self.processes: list[SimProcess] = []
        self.answers: dict[int, _Answer] = {}  # the children's answers that are not over
        # what the children scheduled: (time, order asked, fn, arg)
        self._due: list[tuple[float, int, Callable[[Any], object], Any]] = []
        self._seq = 0
        self._wake = trio.CancelScope()  # the scheduler's sleep until the next of ``_due``
        self.seen: dict[int, Seen] = {}
        self.misuse: list[str] = []  # what the driver did to a child that a real one forbids
        self.exchanges: list[Exchange] = []
        self.log: list[str] = []
        self.sources = {m: ModelEntry(m, Path(f"/sim/{m}.gguf"), "preset")
                        for m in self.config.models}
        self.cache = _CacheFolder(Path(tempfile.mkdtemp(prefix="whole-sim-cache-")))
        self._stuck_watch = trio.CancelScope()
        specs = tuple(self.spec_for(e) for e in self.sources.values())
        self.core = RouterCore(RouterConfig(models=specs, models_max=self.config.models_max))
        self.driver = Driver(self.core, self.spawn, record=True, log=self.log.append,
                             download_spawner=self.spawn)
        self.driver.trace = _Bounded(self.config.max_trace)
        self.network = ChildNetwork(self)
        self.app = RouterApp(self.driver, RouterOptions(models_max=self.config.models_max),
                             load_entries=self.load_entries, spec_for=self.spec_for,
                             cache=self.cache.path, connect=self.network.connect,
                             blocking=_inline, hub_files=_hub_files)

    def load_entries(self) -> list[ModelEntry]:
        """What the sources say now: the presets, and the complete models in the cache."""
        cached = [ModelEntry(c.name, c.path, "cache") for c in list_cached(self.cache.path)]
        return [*self.sources.values(), *cached]

    def spec_for(self, entry: ModelEntry) -> ModelSpec:
        return ModelSpec(entry.name, stop_timeout=self.config.stop_timeout,
                         launch=(str(entry.path), *entry.args()), card=card_of(entry))

    def chance(self, p: float) -> bool:
        return p > 0.0 and self.rng.random() < p

    # the children's host
    @property
    def now(self) -> float:
        return trio.current_time()

    def at(self, t: float, fn: Callable[[Any], object], arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self._due, (t, self._seq, fn, arg))
        self._wake.deadline = min(self._wake.deadline, t)

    async def _keep_time(self) -> None:
        """Run what the children scheduled when its time comes, in order: one task, so that
        trio's shuffle cannot reorder the chunks of a line."""
        while True:
            while self._due and self._due[0][0] <= trio.current_time():
                _, _, fn, arg = heapq.heappop(self._due)
                fn(arg)
            self._wake = trio.CancelScope(deadline=self._due[0][0] if self._due else math.inf)
            with self._wake:
                await trio.sleep_forever()

    def deliver(self, event: Event) -> None:
        if isinstance(event, ChildOutput):
            self.by_instance[event.instance].output(event.data)
        elif isinstance(event, ChildExited):
            self.by_instance[event.instance].exited(event.code)
        elif isinstance(event, ResponseEnded):
            answer = self.answers.pop(event.req, None)
            if answer is not None:  # else nobody reads it any more
                answer.end(event.ok)

    def answer(self, life: SimChild, service: float) -> _Answer:
        """``life`` starts on an answer that takes ``service`` seconds."""
        self._seq += 1  # a number no other answer has
        answer = _Answer(life, self._seq, self.answers)
        self.answers[answer.req] = answer
        answer.start = life.serve(answer.req, service)
        return answer

    def signal(self, pid: int, sig: int) -> None:
        """``os.kill`` while the run lasts: the world's signals reach simulated children only.
        A signal for a reaped child's pid, or for a pid that is no child's (pid <= 0 is a whole
        process group), is misuse, and is not sent (upstream #22452, #24728: Z16)."""
        child = self.by_instance.get(pid - PID_BASE)
        if child is None:
            self.misuse.append(f"signal {sig} sent to pid {pid}, which is no child's")
        elif child.reaped:
            self.misuse.append(f"signal {sig} sent to pid {pid} of instance {child.instance} "
                               f"({child.model}) after it was reaped: the pid may be another "
                               f"process's by now")
        else:
            child.life.kill()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """``os.kill`` is this world's ``signal`` while the run lasts: no real signal is sent."""
        real = os.kill
        os.kill = self.signal
        try:
            yield
        finally:
            os.kill = real

    async def spawn(self, command: Spawn) -> SimProcess:
        """Start a model's child, or a download child (the driver's ``download_spawner``)."""
        delay = self.rng.uniform(0.0, self.config.spawn_delay) if self.config.spawn_delay else 0
        if delay:
            await trio.sleep(delay)
        if self.chance(self.config.spawn_fail):
            raise OSError(f"simulated: the {'download' if command.download else 'model'} child "
                          f"could not be started")
        kind = SimDownloadChild if command.download else SimChild
        child = SimProcess(self, kind(self, command.instance, command.model,
                                      ignore_stdin=self.config.ignore_stdin))
        self.processes.append(child)
        self.by_instance[child.instance] = child
        if not command.download:
            self.by_port[child.port] = child
        child.life.start()
        return child

    # the clients and the chaos monkey
    async def act(self, step: Action) -> None:
        if isinstance(step, Chat):
            body = step.body if step.body is not None else json.dumps(
                {"model": step.model, "stream": step.stream, "max_tokens": step.tokens,
                 "messages": [{"role": "user", "content": "hi"}]})
            await self.http("POST", "/v1/chat/completions", body.encode(), step.leave,
                            [(b"content-type", b"application/json")])
        elif isinstance(step, Get):
            query = urllib.parse.urlencode({"model": step.model})
            await self.http("GET", f"{step.path}?{query}" + (f"&{step.extra}" if step.extra
                                                              else ""), b"", step.leave)
        elif isinstance(step, (Load, Unload)):
            path = "/models/load" if isinstance(step, Load) else "/models/unload"
            await self.http("POST", path, json.dumps({"model": step.model}).encode(), None,
                            [(b"content-type", b"application/json")])
        elif isinstance(step, Reload):
            entry = self.sources.get(step.model)
            if step.change == "remove":
                self.sources.pop(step.model, None)
            elif step.change == "restore" or entry is None:
                self.sources[step.model] = ModelEntry(step.model, Path(f"/sim/{step.model}.gguf"),
                                                      "preset")
            else:
                flags: dict[str, str | None] = {} if entry.flags else {"-c": "1024"}
                self.sources[step.model] = ModelEntry(entry.name, entry.path, "preset", flags=flags)
            await self.http("GET", "/models?reload=1", b"", None)
        elif isinstance(step, Download):
            await self.http("POST", "/models", json.dumps({"model": step.model}).encode(), None,
                            [(b"content-type", b"application/json")])
        elif isinstance(step, Remove):
            query = urllib.parse.urlencode({"model": step.model})
            await self.http("DELETE", f"/models?{query}", b"", None)
        elif isinstance(step, Watch):
            await self.http("GET", "/models/sse", b"", step.leave)
        elif isinstance(step, Crash):
            alive = [p for p in self.processes if p.model == step.model and p.alive]
            if alive:
                alive[-1].life.crash(step.code)

    async def http(self, method: str, target: str, body: bytes, leave: float | None,
                   headers: list[tuple[bytes, bytes]] = []) -> None:
        ex = Exchange(len(self.exchanges) + 1, method, target)
        self.exchanges.append(ex)
        await call(self.app.app, ex, body, leave, headers)

    async def main(self) -> float:
        async with trio.open_nursery() as world:
            self.network.nursery = world
            world.start_soon(self._keep_time)
            await world.start(self.driver.run)
            with trio.move_on_after(self.end_of_steps() + self.config.settle) as calls:
                async with trio.open_nursery() as clients:
                    for step in self.program.steps:
                        if step.after > 0:
                            await trio.sleep(step.after)
                        clients.start_soon(self.act, step)
                    world.start_soon(self._stuck, calls)
            self._stuck_watch.cancel()
            # Let loads, exits and stop timeouts under way play out before the trace ends.
            await self._until_quiet()
            end = trio.current_time()
            world.cancel_scope.cancel()
        return end

    async def _stuck(self, calls: trio.CancelScope) -> None:
        """End the calls early when the router has done nothing for ``quiet`` seconds while
        some are still open: it is stuck, and waiting out ``settle`` would show nothing more."""
        with self._stuck_watch:
            await self._until_quiet()
            calls.cancel()

    async def _until_quiet(self) -> None:
        """Return once the router has done nothing for ``quiet`` seconds: no event or command,
        no byte to a client."""
        seen: tuple[int, int] | None = None
        while self._activity() != seen:
            seen = self._activity()
            await trio.sleep(self.config.quiet)

    def _activity(self) -> tuple[int, int]:
        assert self.driver.trace is not None
        return len(self.driver.trace), sum(len(e.body) for e in self.exchanges)

    def end_of_steps(self) -> float:
        return sum(step.after for step in self.program.steps)


class Runaway(BaseException):
    """The trace passed its bound: the router is spinning (time never moves on) or thrashing.
    A BaseException, so that no ``except Exception`` of the router's takes it for a failure of
    its own and carries on."""


class _Bounded(list[At]):
    """The driver's trace, raising :class:`Runaway` past ``limit`` entries: a router that loops
    without waiting keeps virtual time still, so no timer could stop it."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def append(self, item: At) -> None:
        if len(self) >= self.limit:
            raise Runaway()
        super().append(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)


def _hub_files(repo: str) -> list[str]:
    if repo not in HUB:
        raise LookupError(f"model repo {repo!r} not found on the hub")
    return HUB[repo]


async def _inline(fn: Any, *args: Any) -> Any:
    """Blocking work of the router's, run in virtual time: no thread (a thread's real duration
    would let the mock clock jump, and the run would not replay)."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


def _is_runaway(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_runaway(e) for e in exc.exceptions)
    return isinstance(exc, Runaway)


def run_program(program: Program) -> Run:
    """Run ``program`` in virtual time; the same program always gives the same run."""
    world = WholeWorld(program)
    deterministic = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio_run._r.seed(program.seed)
    runaway = False
    clock = trio.testing.MockClock(autojump_threshold=0)
    try:
        with world.signals():
            end = trio.run(world.main, clock=clock)
    except BaseException as exc:  # noqa: BLE001 - a Runaway, maybe inside exception groups
        if not _is_runaway(exc):
            raise
        runaway, end = True, clock.current_time()
    finally:
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = deterministic  # type: ignore[misc]
        shutil.rmtree(world.cache.path, ignore_errors=True)
    assert isinstance(world.driver.trace, list)
    return Run(program, world.driver.trace, world.core.config, world.exchanges, world.seen,
               world.log, end, world.misuse, runaway)
