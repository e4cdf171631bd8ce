"""A program of concurrent steps played against a live router over loopback HTTP, the history a
client of it observes, and the checks that history must pass: the executor of the live search
(``conformance/search.py``) and, copied whole, the body of every reproduction it writes.

Only httpx and the standard library, on purpose: a reproduction is this file plus the shrunk
program and the router's command line, and a router developer runs it with nothing else
installed. Children are found and signalled through /proc (Linux), not psutil.

Each step starts when the one before it has been *issued*: requests run on threads of their own
(a ``Burst``'s requests wait at one barrier and are released together), so steps overlap as
they would between real clients. ``Pause`` stops a model's child (SIGSTOP) for some seconds,
``Kill`` kills it (SIGKILL) now, or, watching from a thread of its own while the next steps go
on, once the child is loading, loaded, or stopping (an unload of it asked); this is how a
program reaches the wrong instant of a child's life without relying on sleeps alone. A ``Chat``
may ``hold`` its model's child (stopped from just before the request is sent): a generation that
takes that long, which is what keeps a model busy while the other steps meet it.

The world a program runs in may start with models loaded (``World.loaded``: an idle model, the
first condition of most upstream races), and may have a hub: a program that names a hub model
(``user/repo:TAG``) runs beside a loopback stand-in for the Hugging Face hub (a command line, the
harness's ``python -m fixtures.hub``), so that it can ``Download`` that model (``POST /models``);
every router gets a fresh, empty model cache (``LLAMA_CACHE``). ``Reload`` asks the router to
re-read its model sources (``GET /models?reload=1``).
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import httpx

# -- the program -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Chat:
    """``POST /v1/chat/completions`` for ``model``; the client leaves ``leave`` seconds after
    sending (None: it waits for the whole answer). ``hold``: the request takes that long in
    the child: the model's child is stopped (SIGSTOP) for ``hold`` seconds from just before the
    request is sent, or, when the model has no loaded child yet, from the moment it is seen
    loaded (if the answer has not come by then)."""

    model: str
    stream: bool = False
    tokens: int = 4
    leave: float | None = None
    hold: float | None = None


@dataclass(frozen=True)
class Burst:
    """Several requests released together by one barrier: the same instant, several models;
    with ``stagger``, the i-th of them ``i * stagger`` seconds after the barrier."""

    chats: tuple[Chat, ...]
    stagger: float = 0.0


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


@dataclass(frozen=True)
class Download:
    """``POST /models {"model": model}``: download a hub model (``user/repo:TAG``) from the
    program's hub; the router answers at once and downloads in a child of its own."""

    model: str


@dataclass(frozen=True)
class Reload:
    """``GET /models?reload=1``: the router re-reads its model sources; on a thread of its own
    (the answer may take a while: the sources are read again)."""


Step = Union[Chat, Burst, Get, Load, Unload, Pause, Kill, Wait, Download, Reload]


@dataclass(frozen=True)
class World:
    """The router's settings a program runs under: ``models_max``, upstream's test hook
    ``LLAMA_SERVER_DEBUG_FAKE_TIMING`` (each child start and each routed request held 2 s), and
    the models ``loaded`` before the first step (loaded one after the other, each waited for;
    part of the history)."""

    models_max: int = 1
    fake_timing: bool = False
    loaded: tuple[str, ...] = ()


def is_hub_model(name: str) -> bool:
    """A hub model's name, ``user/repo:TAG``, which only a download puts in the router's cache."""
    return "/" in name


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]
    world: World = World()

    def models(self) -> set[str]:
        out: set[str] = set(self.world.loaded)
        for step in self.steps:
            for s in (step.chats if isinstance(step, Burst) else (step,)):
                if hasattr(s, "model"):
                    out.add(s.model)
        return out

    def needs_hub(self) -> bool:
        return any(is_hub_model(m) for m in self.models())

    def touched(self, kinds: tuple[type, ...]) -> set[str]:
        """The models that a step of one of ``kinds`` names."""
        return {str(getattr(s, "model")) for s in self.steps if isinstance(s, kinds)}


FAKE_TIMING_ENV = "LLAMA_SERVER_DEBUG_FAKE_TIMING"


def command_for(program: Program, base: list[str]) -> tuple[list[str], dict[str, str]]:
    """The router's command line (``base`` names everything but the world) and extra env."""
    env = {FAKE_TIMING_ENV: "1"} if program.world.fake_timing else {}
    return [*base, "--models-max", str(program.world.models_max)], env


def hub_env(url: str) -> dict[str, str]:
    """What points a router (huggingface_hub in the reference router's download child, llama.cpp
    in llama-server) at the hub on ``url`` and nowhere else: ``fixtures.hub.LocalHub.env()``,
    written out here because a reproduction imports nothing of the harness
    (``tests/test_search.py`` keeps the two the same)."""
    return {
        "HF_ENDPOINT": url,
        "MODEL_ENDPOINT": url + "/",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HUGGINGFACE_CO_STAGING": "0",
        "LLAMA_ARG_OFFLINE": "0",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


# -- processes, through /proc -----------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn``: SIGKILL when the thread that started the process ends; a process whose
    parent died before ``prctl`` ran (re-parented already) ends itself."""
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


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


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.partition("=")[::2] for item in raw.split("\0") if "=" in item)


DOWNLOAD_MODE = ("LLAMA_SERVER_CHILD_MODE", "download")  # ROUTER.md section 1
HELPER = "refimpl.child.zygote"  # in the command line of a router's helper process


def is_download_child(pid: int) -> bool:
    """A download child takes no slot (ROUTER.md section 4: it does not count to the limit)."""
    key, value = DOWNLOAD_MODE
    return environ(pid).get(key) == value


def takes_no_slot(args: list[str], env: dict[str, str], router: list[str]) -> bool | None:
    """Whether a child of the router with this command line and environment is a download
    child; None while that cannot be known yet: forked and not yet exec'd, it has the router's
    command line, and in the middle of its exec /proc gives an empty one (S10)."""
    if not any(args) or args == router or not env:
        return None
    if any(HELPER in arg for arg in args):  # a helper that holds no model: the reference
        return True  # router's zygote, which forks its children (refimpl/child/zygote.py)
    key, value = DOWNLOAD_MODE
    return env.get(key) == value


def loads_model(pid: int, model: str) -> bool:
    """Whether the child ``pid`` serves, or downloads, ``model``: its command line names the
    model's file (``<models-dir>/NAME.gguf``; for a hub model ``user/repo:TAG``, a file of the
    cache's ``models--user--repo`` folder whose name ends in ``TAG.gguf``), or it is the
    download child of that model (``LLAMA_ARG_HF_REPO``, or the name on its command line)."""
    args = cmdline(pid)
    if not is_hub_model(model):
        return any(arg.endswith(f"/{model}.gguf") for arg in args)
    repo, _, tag = model.partition(":")
    folder = "models--" + repo.replace("/", "--")
    if any(folder in arg and arg.endswith(f"{tag}.gguf") for arg in args):
        return True
    return model in args or (is_download_child(pid)
                             and environ(pid).get("LLAMA_ARG_HF_REPO") == model)


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
    ``hang``, ``get``, ``load-answer``, ``unload-answer``, ``pause``, ``kill``, ``headers``,
    ``download-answer``, ``reload-answer``, ``remove``: a ``model_remove`` event)."""

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
    """One router process playing one program; :meth:`play` returns the history.

    ``hub``: the command line of a hub to start first (it prints its URL on its first line),
    for a program that downloads. Every router gets a fresh, empty model cache."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path,
                 models_dir: Path, hub: list[str] | None = None) -> None:
        self.command = command
        self.port = int(command[command.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.models_dir = models_dir
        self.history = History()
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.cache = Path(tempfile.mkdtemp(prefix="search-cache-"))
        self.hub: subprocess.Popen[bytes] | None = None
        world = {"LLAMA_CACHE": str(self.cache)}
        try:
            if hub:
                world |= hub_env(self._start_hub(hub))
            self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         env={**os.environ, **world, **env},
                                         preexec_fn=_die_with_parent(), start_new_session=True)
        except BaseException:
            self._stop_hub()
            shutil.rmtree(self.cache, ignore_errors=True)
            raise
        self.seen: set[int] = set()
        self.threads: list[threading.Thread] = []
        self.waiting: dict[threading.Thread, str] = {}  # a request's thread -> its model
        self.paused: dict[int, str] = {}  # a stopped child -> its model
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

    def _start_hub(self, hub: list[str], seconds: float = 30.0) -> str:
        """Start the hub; its URL (its first line)."""
        self.hub = subprocess.Popen(hub, stdout=subprocess.PIPE, stderr=self._log,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent(),
                                    start_new_session=True)
        assert self.hub.stdout is not None
        ready, _, _ = select.select([self.hub.stdout], [], [], seconds)
        line = self.hub.stdout.readline().decode(errors="replace").strip() if ready else ""
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the hub ({' '.join(hub)}) did not start: {line!r}\n{self.log()}")
        return line

    def _stop_hub(self) -> None:
        if self.hub is not None and self.hub.poll() is None:
            self.hub.terminate()
            try:
                self.hub.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.hub.kill()
                self.hub.wait(timeout=10)

    def _spawn(self, fn: Any, *args: Any, model: str | None = None) -> threading.Thread:
        """A thread of the program; ``model``: it is a request for that model, which the
        program waits for."""
        thread = threading.Thread(target=fn, args=args, daemon=True)
        if model is not None:
            self.waiting[thread] = model
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
                        if "status" in (message.get("data") or {}):
                            self.history.note("sse", model=message.get("model"),
                                              data=message["data"])
                        elif message.get("event") == "model_remove":  # the entry is gone
                            self.history.note("remove", model=message.get("model"))
        except (httpx.HTTPError, ValueError):
            pass

    def _watch(self) -> None:
        """The most children alive at once, sampled every 10 ms (a zombie is not alive; a
        download child takes no slot)."""
        downloads: dict[int, bool] = {}
        own = cmdline(self.proc.pid)
        while not self._done.is_set():
            kids = children(self.proc.pid)
            self.seen.update(kids)
            for pid in kids:
                if pid not in downloads:
                    known = takes_no_slot(cmdline(pid), environ(pid), own)
                    if known is not None:
                        downloads[pid] = known
            counted = [pid for pid in kids if not downloads.get(pid, True)]
            self.history.peak_children = max(self.history.peak_children, len(counted))
            time.sleep(0.01)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def child(self, model: str) -> int | None:
        """The live child that loads (or downloads) ``model`` (:func:`loads_model`)."""
        for pid in children(self.proc.pid):
            if loads_model(pid, model):
                return pid
        return None

    # -- the steps --

    def play(self, program: Program) -> History:
        for model in program.world.loaded:
            if self.proc.poll() is None:
                self.step(Load(model))
                self._until(model, "loaded", 20.0)
        for step in program.steps:
            if self.proc.poll() is not None:
                break
            self.step(step)
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline and any(t.is_alive() for t in self.threads):
            # A stopped child matters while it keeps another model's request waiting; once
            # every request left is for a stopped child, the pauses end early.
            waiting = {m for t, m in self.waiting.items() if t.is_alive()}
            if self.paused and waiting <= set(self.paused.values()):
                for pid in list(self.paused):
                    self._resume(pid)
            time.sleep(0.02)
        for pid in list(self.paused):
            self._resume(pid)
        for thread in self.threads:  # a hang noted, its thread is let go
            thread.join(0.1)
        self._settle()
        self._catch_up()
        return self.history

    def _until(self, model: str, status: str, seconds: float) -> bool:
        """Wait until ``/models/sse`` says ``model`` is ``status`` (at most ``seconds``)."""
        deadline = time.monotonic() + seconds
        while self.history.status_of(model) != status:
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.01)
        return True

    def _settle(self, seconds: float = 15.0) -> None:
        """Until no model is loading and every unload answered 200 has its ``unloaded`` event
        (or ``seconds``): the steps' consequences (a stop that ends in a kill, a delayed start)
        belong to the history."""
        h = self.history
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            sse = h.of("sse")
            models = {d["model"] for _, d in sse}
            pending = any(h.status_of(m) in ("loading", "downloading") for m in models) or any(
                not any(e["model"] == d["model"] and t >= d["asked"]
                        and e["data"].get("status") == "unloaded" for t, e in sse)
                for _, d in h.of("unload-answer") if d["status"] == 200)
            if not pending:
                return
            time.sleep(0.05)

    def step(self, step: Step) -> None:
        h = self.history
        if isinstance(step, Chat):
            self.threads.append(self._spawn(self._chat, step, None, 0.0, model=step.model))
        elif isinstance(step, Burst):
            barrier = threading.Barrier(len(step.chats))
            for i, chat in enumerate(step.chats):
                self.threads.append(self._spawn(self._chat, chat, barrier, i * step.stagger,
                                                model=chat.model))
        elif isinstance(step, Get):
            self.threads.append(self._spawn(self._get, step, model=step.model))
        elif isinstance(step, Download):
            t = h.now()
            status, text = self._post("/models", step.model)
            h.note("download-answer", model=step.model, status=status, asked=t, text=text)
        elif isinstance(step, Reload):
            self.threads.append(self._spawn(self._reload))
        elif isinstance(step, Load):
            t = h.now()
            status, text = self._post("/models/load", step.model)
            if status == 200:  # noted at the time it was asked: before its loading event
                h.note("load", t=t, model=step.model)
            h.note("load-answer", model=step.model, status=status, text=text, asked=t)
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
                self._pause(pid, step.model, step.seconds)
        elif isinstance(step, Kill):
            if step.when == "now":
                self._kill(step)
            else:
                self.threads.append(self._spawn(self._kill, step))
        elif isinstance(step, Wait):
            time.sleep(step.seconds)

    def _pause(self, pid: int, model: str, seconds: float) -> None:
        """SIGSTOP ``pid`` (the child of ``model``) and SIGCONT it ``seconds`` later."""
        if pid in self.paused:
            return
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return
        self.paused[pid] = model
        self.history.note("pause", model=model, pid=pid, seconds=seconds)
        timer = threading.Timer(seconds, self._resume, (pid,))
        timer.daemon = True
        timer.start()

    def _resume(self, pid: int) -> None:
        if self.paused.pop(pid, None) is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def _hold(self, chat: Chat, answered: threading.Event) -> None:
        """``chat.hold``: stop the model's child now if it is loaded, else once it is seen
        loaded (for up to 10 s, and only while the request has no answer)."""
        assert chat.hold is not None
        deadline = time.monotonic() + 10.0
        while not answered.is_set() and time.monotonic() < deadline \
                and self.proc.poll() is None:
            pid = self.child(chat.model)
            if pid is not None and self.history.status_of(chat.model) == "loaded":
                self._pause(pid, chat.model, chat.hold)
                return
            time.sleep(0.005)

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
                self.paused.pop(pid, None)
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

    def _chat(self, chat: Chat, barrier: threading.Barrier | None, delay: float) -> None:
        h = self.history
        req = next(self._ids)
        body = {"model": chat.model, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": chat.tokens, "stream": chat.stream}
        if barrier is not None:
            barrier.wait()
        if delay:
            time.sleep(delay)
        got = threading.Event()
        if chat.hold:
            pid = self.child(chat.model)
            if pid is not None and h.status_of(chat.model) == "loaded":
                self._pause(pid, chat.model, chat.hold)
            else:
                self._spawn(self._hold, chat, got)
        try:
            self._chat_sent(chat, req, body)
        finally:
            got.set()

    def _chat_sent(self, chat: Chat, req: int, body: dict[str, Any]) -> None:
        h = self.history
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

    def _reload(self) -> None:
        h = self.history
        asked = h.now()
        try:
            r = httpx.get(self.url + "/models", params={"reload": "1"},
                          timeout=httpx.Timeout(SETTLE, connect=5.0))
        except httpx.TimeoutException:
            h.note("reload-answer", asked=asked, status=None, text="no answer")
            return
        except httpx.HTTPError as exc:
            h.note("reload-answer", asked=asked, status=599, text=str(exc)[:200])
            return
        h.note("reload-answer", asked=asked, status=r.status_code,
               text=r.text[:200] if r.status_code >= 400 else "")

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
        """Stop the router (SIGTERM, SIGKILL after 15 s), every child it had and the hub; the
        pids that had to be killed."""
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
        self._stop_hub()
        shutil.rmtree(self.cache, ignore_errors=True)
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


def excuse(program: Program, h: History) -> Callable[[str, float], bool]:
    """Whether a request for a model, sent at a time, may fail: a model the program kills; a
    model whose unload (answered 200) came after the request was sent (it may have been in
    flight); a hub model sent for before its download was accepted, or one whose download the
    program may have cancelled (unloaded). A request sent once an unload was answered waits for
    the model's next child: it must not fail (ROUTER.md section 6; Z9)."""
    killed = program.touched((Kill,))
    unloaded = program.touched((Unload,))
    unloads: dict[str, list[float]] = {}
    for t, d in h.of("unload-answer"):
        if d["status"] == 200:
            unloads.setdefault(d["model"], []).append(t)
    accepted: dict[str, float] = {}
    for t, d in h.of("download-answer"):
        if d["status"] == 200:
            accepted.setdefault(d["model"], t)

    def excused(model: str, sent: float) -> bool:
        if model in killed:
            return True
        if is_hub_model(model):
            return model in unloaded or model not in accepted or sent < accepted[model]
        return any(sent <= t for t in unloads.get(model, []))

    return excused


def check(program: Program, h: History) -> list[Failure]:
    """What must hold of every run, whatever the router: each with what was expected."""
    out: list[Failure] = []
    excused = excuse(program, h)
    sent_at = {d["req"]: t for t, d in h.of("send")}
    touched = program.touched((Kill, Unload))  # a load of theirs may be refused
    if h.router_exit is not None:
        out.append(Failure("router_alive", f"expected the router to keep running; it exited "
                                           f"with {h.router_exit}"))
    for _, d in h.of("hang"):
        out.append(Failure("answered", f"expected every request to be answered within "
                                       f"{SETTLE:g} s; request {d['req']} for {d['model']} "
                                       f"was not"))
    ended = {d["req"]: d for _, d in h.of("end")}
    for _, d in h.of("error"):
        if not excused(d["model"], sent_at.get(d["req"], 0.0)):
            out.append(Failure("no_error", f"expected request {d['req']} for {d['model']} "
                                           f"(neither killed nor unloaded while it was in "
                                           f"flight) to succeed; it got "
                                           f"{d['status']}: {d['text'][:160]}"))
    left = {d["req"] for _, d in h.of("left")}
    for t, d in h.of("answer"):
        e = ended.get(d["req"])
        if d["status"] < 400 and e is not None and not e["ok"] and d["req"] not in left \
                and not excused(d["model"], sent_at.get(d["req"], 0.0)):
            out.append(Failure("stream_whole", f"expected the stream of request {d['req']} for "
                                               f"{d['model']} to end with [DONE]; it was cut: "
                                               f"{e.get('text', e.get('message', ''))[-120:]!r}"))
    for _, d in h.of("load-answer"):
        if d["status"] not in (200, 400) and d["model"] not in touched \
                and not (is_hub_model(d["model"]) and excused(d["model"], d.get("asked", 0.0))):
            out.append(Failure("load_answered", f"expected POST /models/load of {d['model']} "
                                                f"to answer 200 (or 400: already running); it "
                                                f"answered {d['status']}: {d.get('text', '')}"))
    for _, d in h.of("download-answer"):
        if d["status"] not in (200, 400):
            out.append(Failure("download_answered", f"expected POST /models of {d['model']} to "
                                                    f"answer 200 (or 400: the router has it "
                                                    f"already); it answered {d['status']}: "
                                                    f"{d['text']}"))
    for t, d in h.of("reload-answer"):
        if d["status"] != 200:
            out.append(Failure("reload_answered", f"expected GET /models?reload=1 (asked at "
                                                  f"{d['asked']:.3f} s) to answer 200 within "
                                                  f"{SETTLE:g} s; it answered {d['status']}: "
                                                  f"{d['text']}"))
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


AT_ONCE = ("no_thrash", "busy_never_evicted")  # checks that read a departure when it happened


def observed_checks(program: Program, h: History) -> list[Failure]:
    """The harness's invariants over the same history (``properties/observed.py``), when this
    file runs inside the harness's checkout; none otherwise."""
    try:
        from properties.invariants import CHECKS
        from properties.observed import OBSERVABLE, Observed
        from refimpl.core.commands import Publish
        from refimpl.core.config import ModelSpec, RouterConfig
        from refimpl.core.trace import At
    except ImportError:
        return []
    names = sorted(program.models() | set(h.final_models))
    config = RouterConfig(models=tuple(ModelSpec(n) for n in names),
                          models_max=program.world.models_max)
    left_at = {d["req"]: t for t, d in h.of("left")}

    def reading(early: bool) -> list[Any]:
        observed = Observed()
        for t, _, kind, d in sorted(h.entries):
            if kind == "gone" and early:
                t = left_at.get(d["req"], t)
            if kind in ("send", "answer", "end", "load", "unload", "gone", "crash", "sse"):
                observed.add(t, kind, **d)
        trace = observed.trace()
        # A cancelled or failed download's entry is removed (``model_remove``), and the next
        # download of that name is a fresh entry (DOWNLOADING); the observer keeps status
        # events only, so the removals go into its trace here.
        for t, d in h.of("remove"):
            at = bisect.bisect_right([a.t for a in trace], t)
            trace.insert(at, At(t, Publish(d["model"], "model_remove")))
        return [v for name in OBSERVABLE for v in CHECKS[name](trace, config)]

    # A router may notice a client that left at any time within the grace: each check reads
    # the departure at the end of it that is kind to the router. no_thrash and
    # busy_never_evicted: at once (a model whose clients all left may be evicted as soon as the
    # router sees them go: finding S8, twice); the others (coalesced: a load for a client that
    # had left): at the end of the grace.
    found = [v for v in reading(False) if v.guarantee not in AT_ONCE]
    found += [v for v in reading(True) if v.guarantee in AT_ONCE]
    return [Failure(f"observed.{v.guarantee}", str(v)) for v in found]


def play(program: Program, base: list[str], models_dir: Path, log_path: Path,
         extra_env: dict[str, str] | None = None, hub: list[str] | None = None
         ) -> tuple[History, list[Failure], Run]:
    """Start the router on a free port (and ``hub``, the hub's command line, when the program
    names a hub model), play ``program``, stop it; its history and failures. ``base`` is the
    command line with ``{port}`` where the port goes."""
    port = str(free_port())
    command, env = command_for(program, [a.replace("{port}", port) for a in base])
    run = Run(command, {**(extra_env or {}), **env}, log_path, models_dir,
              hub if program.needs_hub() else None)
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
