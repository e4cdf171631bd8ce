#!/usr/bin/env python3
"""Reproduction written by `python -m conformance.search` (20261201-193859).

Router: llama-server; 3 steps after shrinking.
Failed: load_answered: expected POST /models/load of b to answer 200 (or 400: already running); it answered 500: {"error":{"code":500,"message":"model limit reached, try again later","type":"server_error"}}

Run: python llama-server-load_answered-20261201-193859.py [--repeat 10] [--no-extra-env] [--verbose]
Needs only httpx and the standard library (inside the harness's checkout it also applies properties/observed.py).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import httpx

# -- the program -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Chat:
    """``POST /v1/chat/completions`` for ``model``; the client leaves ``leave`` seconds after
    sending (None: it waits for the whole answer)."""

    model: str
    stream: bool = False
    tokens: int = 4
    leave: float | None = None


@dataclass(frozen=True)
class Burst:
    """Several requests released together by one barrier: the same instant, several models."""

    chats: tuple[Chat, ...]


@dataclass(frozen=True)
class Get:
    """``GET {path}?model={model}&{query}``, proxied to the model's child."""

    model: str
    path: str = "/props"
    query: str = "foo=1"


@dataclass(frozen=True)
class Load:
    model: str


@dataclass(frozen=True)
class Unload:
    model: str


@dataclass(frozen=True)
class Pause:
    """SIGSTOP the model's child (if it has one) and SIGCONT it ``seconds`` later."""

    model: str
    seconds: float = 1.0


@dataclass(frozen=True)
class Kill:
    """SIGKILL the model's child: ``now`` (if it has one), or once it is ``loading`` or
    ``loaded``, or ``stopping`` (an unload of the model was asked and its child still lives).
    All but ``now`` watch from a thread of their own for up to 10 s (nothing if the moment never
    comes), so that a later step can bring the moment about."""

    model: str
    when: str = "now"


@dataclass(frozen=True)
class Wait:
    seconds: float


Step = Union[Chat, Burst, Get, Load, Unload, Pause, Kill, Wait]


@dataclass(frozen=True)
class World:
    """The router's settings a program runs under: ``models_max``, and upstream's test hook
    ``LLAMA_SERVER_DEBUG_FAKE_TIMING`` (each child start and each routed request held 2 s)."""

    models_max: int = 1
    fake_timing: bool = False


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]
    world: World = World()

    def models(self) -> set[str]:
        out: set[str] = set()
        for step in self.steps:
            for s in (step.chats if isinstance(step, Burst) else (step,)):
                if hasattr(s, "model"):
                    out.add(s.model)
        return out

    def touched(self, kinds: tuple[type, ...]) -> set[str]:
        """The models that a step of one of ``kinds`` names."""
        return {s.model for s in self.steps if isinstance(s, kinds)}


FAKE_TIMING_ENV = "LLAMA_SERVER_DEBUG_FAKE_TIMING"


def command_for(program: Program, base: list[str]) -> tuple[list[str], dict[str, str]]:
    """The router's command line (``base`` names everything but the world) and extra env."""
    env = {FAKE_TIMING_ENV: "1"} if program.world.fake_timing else {}
    return [*base, "--models-max", str(program.world.models_max)], env


# -- processes, through /proc -----------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid``, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == pid and st[0] not in "ZX" and not any(
                    "refimpl.child.zygote" in arg for arg in cmdline(int(entry))):
                out.append(int(entry))  # a router's helper holding no model is no child here
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- what happened ----------------------------------------------------------------------------


@dataclass
class History:
    """What the client saw, with times in seconds from the router's first health answer:
    entries in the shape ``properties/observed.py`` reads (``send``, ``answer``, ``end``,
    ``load``, ``unload``, ``gone``, ``crash``, ``sse``) and the checks' own (``error``, ``left``,
    ``hang``, ``get``, ``load-answer``, ``unload-answer``, ``pause``, ``kill``, ``headers``)."""

    entries: list[tuple[float, int, str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    t0: float = field(default_factory=time.monotonic)
    peak_children: int = 0
    router_exit: int | None = None  # the router's exit status if it died during the run
    final_models: dict[str, Any] = field(default_factory=dict)
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))  # type: ignore[type-arg]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, kind: str, t: float | None = None, **data: Any) -> None:
        with self.lock:
            self.entries.append((self.now() if t is None else t, next(self._seq), kind, data))

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t, d) for t, _, k, d in sorted(self.entries) if k == kind]

    def status_of(self, model: str) -> str | None:
        """The model's latest status on ``/models/sse``."""
        seen = [d["data"]["status"] for _, d in self.of("sse")
                if d["model"] == model and "status" in d["data"]]
        return seen[-1] if seen else None

    def lines(self) -> list[str]:
        with self.lock:
            return [f"{t:8.3f} {k:<13} {json.dumps(d, sort_keys=True)[:200]}"
                    for t, _, k, d in sorted(self.entries)]


# -- playing a program --------------------------------------------------------------------------

SETTLE = 60.0  # seconds every request gets to be answered once the steps are issued
GONE_GRACE = 1.0  # seconds a router may take to notice that a client left
# LLAMA_SERVER_DEBUG_FAKE_TIMING holds each start this long: a load decided while a request
# waited shows as "loading" only then (upstream sleeps before it publishes), and a stop asked
# meanwhile waits for it.
FAKE_DELAY = 2.0


class Run:
    """One router process playing one program; :meth:`play` returns the history."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path,
                 models_dir: Path) -> None:
        self.command = command
        self.port = int(command[command.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.models_dir = models_dir
        self.history = History()
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **env},
                                     preexec_fn=_die_with_parent, start_new_session=True)
        self.seen: set[int] = set()
        self.threads: list[threading.Thread] = []
        self.paused: set[int] = set()
        self.unloading: set[str] = set()  # models an Unload step has asked to stop
        # how long after a client left the router may still act for it (see FAKE_DELAY)
        self.gone_grace = GONE_GRACE + (FAKE_DELAY if env.get(FAKE_TIMING_ENV) else 0.0)
        self._ids = itertools.count(1)
        self._done = threading.Event()
        try:
            self._wait_healthy()
            self.history.t0 = time.monotonic()
            self._subscribed = threading.Event()
            self._spawn(self._listen)
            if not self._subscribed.wait(30):
                raise RuntimeError("/models/sse never answered")
            self._spawn(self._watch)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, fn: Any, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        return thread

    def _wait_healthy(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"router not healthy after {seconds:g} s:\n{self.log()}")

    def _listen(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(None, connect=5.0)) as c, \
                    c.stream("GET", self.url + "/models/sse") as r:
                self._subscribed.set()
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        message = json.loads(line[6:])
                        if "status" in message.get("data", {}):
                            self.history.note("sse", model=message.get("model"),
                                              data=message["data"])
        except (httpx.HTTPError, ValueError):
            pass

    def _watch(self) -> None:
        """The most children alive at once, sampled every 10 ms (a zombie is not alive)."""
        while not self._done.is_set():
            kids = children(self.proc.pid)
            self.seen.update(kids)
            self.history.peak_children = max(self.history.peak_children, len(kids))
            time.sleep(0.01)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def child(self, model: str) -> int | None:
        """The live child whose command line loads ``model`` (by its file's name)."""
        for pid in children(self.proc.pid):
            if any(arg.endswith(f"/{model}.gguf") for arg in cmdline(pid)):
                return pid
        return None

    # -- the steps --

    def play(self, program: Program) -> History:
        for step in program.steps:
            if self.proc.poll() is not None:
                break
            self.step(step)
        deadline = time.monotonic() + SETTLE
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for pid in list(self.paused):
            self._resume(pid)
        for thread in self.threads:  # a hang noted, its thread is let go
            thread.join(0.1)
        self._catch_up()
        return self.history

    def step(self, step: Step) -> None:
        h = self.history
        if isinstance(step, Chat):
            self.threads.append(self._spawn(self._chat, step, None))
        elif isinstance(step, Burst):
            barrier = threading.Barrier(len(step.chats))
            for chat in step.chats:
                self.threads.append(self._spawn(self._chat, chat, barrier))
        elif isinstance(step, Get):
            self.threads.append(self._spawn(self._get, step))
        elif isinstance(step, Load):
            t = h.now()
            status, text = self._post("/models/load", step.model)
            if status == 200:  # noted at the time it was asked: before its loading event
                h.note("load", t=t, model=step.model)
            h.note("load-answer", model=step.model, status=status, text=text)
        elif isinstance(step, Unload):
            t = h.now()
            before = h.status_of(step.model)
            self.unloading.add(step.model)
            status, _ = self._post("/models/unload", step.model)
            if status == 200:  # noted at the time it was asked: before its unloaded event
                h.note("unload", t=t, model=step.model)
            # /models/sse may lag the unload: the status the answer saw counts as well
            h.note("unload-answer", model=step.model, status=status, asked=t, before=before,
                   answered=h.status_of(step.model))
        elif isinstance(step, Pause):
            pid = self.child(step.model)
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
                self.paused.add(pid)
                h.note("pause", model=step.model, pid=pid, seconds=step.seconds)
                timer = threading.Timer(step.seconds, self._resume, (pid,))
                timer.daemon = True
                timer.start()
        elif isinstance(step, Kill):
            if step.when == "now":
                self._kill(step)
            else:
                self.threads.append(self._spawn(self._kill, step))
        elif isinstance(step, Wait):
            time.sleep(step.seconds)

    def _resume(self, pid: int) -> None:
        if pid in self.paused:
            self.paused.discard(pid)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def _kill(self, step: Kill) -> None:
        deadline = time.monotonic() + (0 if step.when == "now" else 10)
        while True:
            pid = self.child(step.model)
            status = self.history.status_of(step.model)
            if step.when == "stopping":
                status = "stopping" if step.model in self.unloading else status
            if pid is not None and (step.when == "now" or status == step.when):
                self.history.note("crash", model=step.model)  # observed.py: not an eviction
                self.history.note("kill", model=step.model, pid=pid, status=status)
                os.kill(pid, signal.SIGKILL)
                self.paused.discard(pid)
                return
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                return
            time.sleep(0.005)

    def _post(self, path: str, model: str) -> tuple[int, str]:
        """The status and (for an error) the start of the body."""
        try:
            r = httpx.post(self.url + path, json={"model": model},
                           timeout=httpx.Timeout(SETTLE, connect=5.0))
        except httpx.HTTPError as exc:
            return 599, str(exc)[:200]
        return r.status_code, r.text[:200] if r.status_code >= 400 else ""

    def _headers(self, req: int, r: httpx.Response) -> None:
        names = [k.decode().lower() for k, _ in r.headers.raw]
        twice = sorted({n for n in names if names.count(n) > 1 and n != "set-cookie"})
        if twice:
            self.history.note("headers", req=req, twice=twice)

    def _chat(self, chat: Chat, barrier: threading.Barrier | None) -> None:
        h = self.history
        req = next(self._ids)
        body = {"model": chat.model, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": chat.tokens, "stream": chat.stream}
        if barrier is not None:
            barrier.wait()
        sent = h.now()
        h.note("send", t=sent, req=req, model=chat.model)
        wait = SETTLE if chat.leave is None else chat.leave
        answered = False

        def leave() -> None:
            # observed.py: the client left. A router notices a closed connection only by
            # looking (upstream every 200 ms): until then the request still waits, as it sees it.
            h.note("gone", t=h.now() + self.gone_grace, req=req)
            h.note("left", req=req, model=chat.model, answered=answered)

        try:
            with httpx.Client(timeout=httpx.Timeout(wait, connect=5.0)) as client, \
                    client.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                h.note("answer", req=req, model=chat.model, status=r.status_code)
                answered = True
                self._headers(req, r)
                chunks = []
                for chunk in r.iter_raw():
                    chunks.append(chunk)
                    if chat.leave is not None and h.now() - sent > chat.leave:
                        return leave()
                text = b"".join(chunks).decode(errors="replace")
                if r.status_code < 400:
                    ok = not chat.stream or "[DONE]" in text
                    h.note("end", req=req, ok=ok, **({} if ok else {"text": text[-200:]}))
                else:
                    h.note("error", req=req, model=chat.model, status=r.status_code,
                           text=text[:300])
        except httpx.TimeoutException:
            if chat.leave is not None:
                leave()
            else:
                h.note("hang", req=req, model=chat.model, answered=answered)
        except httpx.HTTPError as exc:
            if not answered:
                h.note("answer", req=req, model=chat.model, status=599, message=str(exc))
            else:
                h.note("end", req=req, ok=False, message=str(exc))
            h.note("error", req=req, model=chat.model, status=599, text=str(exc)[:300])

    def _get(self, get: Get) -> None:
        h = self.history
        req = next(self._ids)
        target = f"{get.path}?model={get.model}" + (f"&{get.query}" if get.query else "")
        sent = h.now()
        try:
            r = httpx.get(self.url + target, timeout=httpx.Timeout(SETTLE, connect=5.0))
        except httpx.TimeoutException:
            h.note("send", t=sent, req=req, model=get.model)
            h.note("hang", req=req, model=get.model, answered=False)
            return
        except httpx.HTTPError as exc:
            h.note("send", t=sent, req=req, model=get.model)
            h.note("answer", req=req, model=get.model, status=599, message=str(exc))
            h.note("error", req=req, model=get.model, status=599, text=str(exc)[:300])
            return
        h.note("send", t=sent, req=req, model=get.model)
        h.note("answer", req=req, model=get.model, status=r.status_code)
        if r.status_code < 400:
            h.note("end", req=req, ok=True)
        else:
            h.note("error", req=req, model=get.model, status=r.status_code, text=r.text[:300])
        self._headers(req, r)
        try:
            answer = r.json() if r.status_code == 200 else None
        except ValueError:
            answer = None
        echoed = answer.get("path") if isinstance(answer, dict) else None  # fake children echo
        h.note("get", req=req, model=get.model, sent=target, echoed=echoed)

    def _catch_up(self, timeout: float = 5.0) -> None:
        """Until ``/models/sse`` agrees with ``GET /models`` (or ``timeout``); keeps the last
        snapshot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                data = httpx.get(self.url + "/models", timeout=10).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                return
            now = {m["id"]: m.get("status", {}) for m in data}
            self.history.final_models = now
            if all(self.history.status_of(n) in (None, s.get("value")) for n, s in now.items()):
                return
            time.sleep(0.05)

    def stop(self) -> list[int]:
        """Stop the router (SIGTERM, SIGKILL after 15 s) and every child it had; the pids that
        had to be killed."""
        self._done.set()
        if self.proc.poll() is not None and self.history.router_exit is None:
            self.history.router_exit = self.proc.returncode
        self.seen.update(children(self.proc.pid))
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        left = []
        deadline = time.monotonic() + 10
        for pid in sorted(self.seen):
            while _stat(pid) is not None and _stat(pid)[0] not in "ZX" \
                    and time.monotonic() < deadline:  # type: ignore[index]
                time.sleep(0.02)
            if _stat(pid) is not None and _stat(pid)[0] not in "ZX":  # type: ignore[index]
                left.append(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()
        return left


# -- the checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A check that failed: its name, whether it depends on timing, and what it saw."""

    check: str
    detail: str
    timing: bool = False

    def __str__(self) -> str:
        return f"{self.check}{' (timing)' if self.timing else ''}: {self.detail}"


PROMPT_UNLOAD = 1.5  # seconds: unloading a LOADING child kills it at once (Z6)


def check(program: Program, h: History) -> list[Failure]:
    """What must hold of every run, whatever the router: each with what was expected."""
    out: list[Failure] = []
    excused = program.touched((Kill, Unload))  # their requests may fail
    if h.router_exit is not None:
        out.append(Failure("router_alive", f"expected the router to keep running; it exited "
                                           f"with {h.router_exit}"))
    for _, d in h.of("hang"):
        out.append(Failure("answered", f"expected every request to be answered within "
                                       f"{SETTLE:g} s; request {d['req']} for {d['model']} "
                                       f"was not"))
    ended = {d["req"]: d for _, d in h.of("end")}
    for _, d in h.of("error"):
        if d["model"] not in excused:
            out.append(Failure("no_error", f"expected request {d['req']} for {d['model']} "
                                           f"(never killed nor unloaded) to succeed; it got "
                                           f"{d['status']}: {d['text'][:160]}"))
    left = {d["req"] for _, d in h.of("left")}
    for t, d in h.of("answer"):
        e = ended.get(d["req"])
        if d["status"] < 400 and e is not None and not e["ok"] and d["req"] not in left \
                and d["model"] not in excused:
            out.append(Failure("stream_whole", f"expected the stream of request {d['req']} for "
                                               f"{d['model']} to end with [DONE]; it was cut: "
                                               f"{e.get('text', e.get('message', ''))[-120:]!r}"))
    for _, d in h.of("load-answer"):
        if d["status"] not in (200, 400) and d["model"] not in excused:
            out.append(Failure("load_answered", f"expected POST /models/load of {d['model']} "
                                                f"to answer 200 (or 400: already running); it "
                                                f"answered {d['status']}: {d.get('text', '')}"))
    for _, d in h.of("headers"):
        out.append(Failure("headers_once", f"expected no header twice in an answer; request "
                                           f"{d['req']} had {', '.join(d['twice'])} twice"))
    for _, d in h.of("get"):
        if d["echoed"] is not None and d["echoed"] != d["sent"]:
            out.append(Failure("query_kept", f"expected the child to see {d['sent']!r}; it saw "
                                             f"{d['echoed']!r}"))
    limit = program.world.models_max
    if limit and h.peak_children > limit:
        out.append(Failure("children_within_limit", f"expected at most {limit} children alive "
                                                    f"at once; saw {h.peak_children}"))
    killed = program.touched((Kill,))
    sse = h.of("sse")
    for _, d in h.of("unload-answer"):
        if d["status"] != 200 or d["model"] in killed:
            continue
        after = [(t, e["data"]) for t, e in sse
                 if e["model"] == d["model"] and t >= d["asked"]
                 and e["data"].get("status") == "unloaded"]
        if after and after[0][1].get("failed"):
            out.append(Failure("unload_not_failed", f"expected the unload of {d['model']} that "
                                                    f"was asked for not to be reported failed; "
                                                    f"it was: {after[0][1]}"))
        prompt = PROMPT_UNLOAD + (FAKE_DELAY if program.world.fake_timing else 0.0)
        loading = "loading" in (d["before"], d.get("answered"))
        if after and loading and after[0][0] - d["asked"] > prompt:
            out.append(Failure("loading_unload_prompt",
                               f"expected {d['model']}, unloaded while LOADING, to be unloaded "
                               f"within {prompt:g} s; it took "
                               f"{after[0][0] - d['asked']:.2f} s", timing=True))
    return out


def observed_checks(program: Program, h: History) -> list[Failure]:
    """The harness's invariants over the same history (``properties/observed.py``), when this
    file runs inside the harness's checkout; none otherwise."""
    try:
        from properties.observed import Observed, check_observed
        from refimpl.core.config import ModelSpec, RouterConfig
    except ImportError:
        return []
    observed = Observed()
    for t, _, kind, d in sorted(h.entries):
        if kind in ("send", "answer", "end", "load", "unload", "gone", "crash", "sse"):
            observed.add(t, kind, **d)
    names = sorted(program.models() | set(h.final_models))
    config = RouterConfig(models=tuple(ModelSpec(n) for n in names),
                          models_max=program.world.models_max)
    return [Failure(f"observed.{v.guarantee}", str(v)) for v in check_observed(observed, config)]


def play(program: Program, base: list[str], models_dir: Path, log_path: Path,
         extra_env: dict[str, str] | None = None) -> tuple[History, list[Failure], Run]:
    """Start the router on a free port, play ``program``, stop it; its history and failures.
    ``base`` is the command line with ``{port}`` where the port goes."""
    port = str(free_port())
    command, env = command_for(program, [a.replace("{port}", port) for a in base])
    run = Run(command, {**(extra_env or {}), **env}, log_path, models_dir)
    try:
        history = run.play(program)
    finally:
        if run.proc.poll() is not None:
            run.history.router_exit = run.proc.returncode
        left = run.stop()
    failures = check(program, history) + observed_checks(program, history)
    if left:
        failures.append(Failure("children_stopped", f"expected every child to exit with the "
                                                    f"router; killed {left}"))
    return history, failures, run


# -- this reproduction ------------------------------------------------------------------------

def _here(value):
    """The recorded value with this machine's paths: ``<python>`` this Python, ``<root>`` the
    harness's checkout ($LLAMA_ROUTER_HARNESS_ROOT, else this file's grandparent folder when it
    is one, else the working folder), and
    ``<llama-server>`` $LLAMA_SERVER_BIN_PATH (else ``llama-server`` on the PATH)."""
    import sys
    here = Path(__file__).resolve().parents[2]  # conformance/repros/ of a checkout
    root = os.environ.get("LLAMA_ROUTER_HARNESS_ROOT") or (
        str(here) if (here / "refimpl").is_dir() else os.getcwd())
    places = {"<python>": sys.executable, "<root>": root,
               "<llama-server>": os.environ.get("LLAMA_SERVER_BIN_PATH", "llama-server")}
    if isinstance(value, str):
        for mark, place in places.items():
            value = value.replace(mark, place)
        return value
    if isinstance(value, dict):
        return {k: _here(v) for k, v in value.items()}
    return [_here(v) for v in value]


COMMAND = _here(['<llama-server>', '--host', '127.0.0.1', '--port', '{port}', '--models-dir', '<root>/out/search/models'])  # "{port}": a free port
EXTRA_ENV = _here({})
MODELS_DIR = _here('<root>/out/search/models')
CWD = _here('<root>')
PROGRAM = Program(steps=(Chat(model='c', stream=False, tokens=16, leave=None), Wait(seconds=0.3), Load(model='b')), world=World(models_max=1, fake_timing=True))
FOUND = ['load_answered: expected POST /models/load of b to answer 200 (or 400: already running); it answered 500: {"error":{"code":500,"message":"model limit reached, try again later","type":"server_error"}}']


def main() -> int:
    import argparse
    import sys
    import tempfile
    p = argparse.ArgumentParser(description="Replay a program found by conformance.search "
                                            "against the router it was found on.")
    p.add_argument("--repeat", type=int, default=1, help="runs (default 1); prints how many failed")
    p.add_argument("--no-extra-env", action="store_true",
                   help="start the router without EXTRA_ENV (e.g. without the zoo mutant)")
    p.add_argument("--verbose", action="store_true", help="print each run's history")
    args = p.parse_args()
    os.chdir(CWD)
    env = {} if args.no_extra_env else EXTRA_ENV
    failed = 0
    print("program:", PROGRAM)
    print("expected: every check passes; when found it failed:")
    for line in FOUND:
        print("  -", line)
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            history, failures, run = play(PROGRAM, COMMAND, Path(MODELS_DIR),
                                          Path(tmp) / "router.log", env)
            log = run.log_path.read_text(errors="replace")[-3000:]
        failed += bool(failures)
        print(f"run {i + 1}: " + ("FAILED" if failures else "passed"))
        for f in failures:
            print("  happened:", f)
        if args.verbose or (failures and args.repeat == 1):
            print("  history:")
            print("\n".join("    " + line for line in history.lines()))
            print("  router log (tail):")
            print("\n".join("    " + line for line in log.splitlines()[-40:]))
    print(f"failed {failed} of {args.repeat} runs")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
