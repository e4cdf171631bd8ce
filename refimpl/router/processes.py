"""Real child processes: the command line, the environment, a free port, and the pipes."""

from __future__ import annotations

import array
import ctypes
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Awaitable, Callable

import anyio
import anyio.lowlevel

from refimpl.core.commands import Spawn
from refimpl.core.config import Card
from refimpl.core.protocol import LoadingState, ReadyState, format_message

from .loglimit import MAX_LOG_LINE, LogLimit, cut

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
# Loaded here, before any fork: the forked child only calls into it, it never loads a library.
_LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the started process die (SIGKILL) when its parent does.

    ``PR_SET_PDEATHSIG`` is kept across ``exec``, so it holds for llama-server children, fake
    children and download children alike, even one that ignores SIGTERM, its exit command and
    stdin EOF. It fires when the *thread* that forked dies, not the process: call ``Popen`` with
    it from a thread that lives as long as the parent (the router's event loop, a test's main
    thread), never from a short-lived worker thread. The parent's pid is taken before the fork:
    if the parent died before ``prctl`` ran, the signal will never come, so the child ends itself.
    """
    parent = os.getpid()

    def preexec() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # re-parented already: the death signal was missed
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Filled in one pass: a value (a file named x$port.gguf) is never read again for placeholders.
PLACEHOLDERS = re.compile(r"\{python\}|\$(?:model|port|host|alias)")


def child_command(template: str, name: str, card: Card, port: int) -> list[str]:
    """Fill the child command template (seed 003 style: $model, $port, $host, $alias).

    Without ``$model`` in it, the model, port and host flags are appended as llama-server takes
    them; the model's own flags always follow. Paths are made absolute, so that a file named like
    a flag (``-v.gguf``, ``--host=0.0.0.0.gguf``) starts with '/' and is never read as one; a
    name that starts with '-' is appended as ``--alias=NAME``, the one form an argparse child
    (ours) cannot read as a flag (llama.cpp's parser takes the next word as the value whatever
    it is, but not ``--alias=``: such a name fails to load there, as a flag it would not).
    """
    # No file: a preset's hf-repo the cache does not hold; its child, handed the repo in its
    # flags, fetches it as it loads (as llama-server's does)
    if card.path is None and "$model" in template:
        raise ValueError(f"model {name!r} has no file yet for $model in the child command "
                         "(its child is to fetch it from its --hf-repo)")
    model = "" if card.path is None else os.path.abspath(card.path)
    values = {"{python}": sys.executable, "$model": model, "$port": str(port),
              "$host": "127.0.0.1", "$alias": name}
    filled = [PLACEHOLDERS.sub(lambda m: values[m[0]], word) for word in shlex.split(template)]
    if "$model" not in template:
        alias = [f"--alias={name}"] if name.startswith("-") else ["--alias", name]
        filled += [*(["-m", model] if model else []), "--port", str(port), "--host", "127.0.0.1",
                   *alias]
    if card.mmproj is not None and "--mmproj" not in card.args:
        filled += ["--mmproj", os.path.abspath(card.mmproj)]
    return filled + list(card.args)


@dataclass
class ChildProcess:
    """One real child: the driver reads its output and writes the exit command to its stdin.

    Started with ``subprocess.Popen`` and driven through non-blocking pipes and a pidfd, not with
    ``anyio.open_process``: under uvicorn that was uvloop's spawn (the router ran on uvloop
    then), which left extra copies of the child's stdio pipes (and every inheritable descriptor of
    the router) open in the child, so a child that closed its stdout was never seen at EOF
    (tests/test_faults.py, no-newline). Popen does not depend on the event loop.

    A child dies with the router (``die_with_parent``), SIGKILL of the router included. The
    router starts every child from its event-loop thread (``Driver._run_child`` awaits the
    spawner; uvicorn runs the loop on the main thread), which lives as long as the router, so the
    death signal comes only when the router itself dies (tests/test_no_orphans.py).
    """

    process: subprocess.Popen[bytes]
    port: int
    api_key: str | None = None  # the child's own key (LLAMA_API_KEY), which the proxy sends

    @classmethod
    def start(cls, cmd: list[str], env: dict[str, str], port: int,
              log: Callable[[str], None] | None = None) -> ChildProcess:
        """Start ``cmd``. With ``log``, its stderr is logged line by line, apart from stdout
        (``_relay_stderr``); without, stderr shares the stdout pipe."""
        process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT if log is None else subprocess.PIPE,
                                   env=env, start_new_session=True, close_fds=True, bufsize=0,
                                   preexec_fn=die_with_parent())
        assert process.stdin is not None and process.stdout is not None
        os.set_blocking(process.stdin.fileno(), False)
        os.set_blocking(process.stdout.fileno(), False)
        if log is not None and process.stderr is not None:
            threading.Thread(target=_relay_stderr, args=(process.stderr, f"[{port}] ", log),
                             daemon=True).start()
        return cls(process, port)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read(self) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        # A checkpoint per chunk: a child that writes as fast as it can must not keep the event
        # loop from everything else (its pipe is always readable; /health took 3.2 s).
        await anyio.lowlevel.checkpoint()
        while True:
            try:
                return os.read(fd, 65536)
            except BlockingIOError:
                await anyio.wait_readable(fd)
            except OSError:
                return b""

    async def write_stdin(self, data: bytes) -> None:
        assert self.process.stdin is not None
        if self.process.stdin.closed:  # wait() closes it once the child is reaped
            raise BrokenPipeError("the child has exited")
        fd = self.process.stdin.fileno()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await anyio.wait_writable(fd)

    def kill(self) -> None:
        # Never signal a process that has been reaped: its pid may be reused, or be <= 0, which
        # signals a whole process group (upstream #22452, #24728).
        if self.process.returncode is None and self.process.pid > 0:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        if self.process.poll() is None:
            pidfd = os.pidfd_open(self.process.pid)
            try:
                await anyio.wait_readable(pidfd)  # readable once the process has exited
            finally:
                os.close(pidfd)
        code = self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        return code


class ForkedProcess:
    """What ``ChildProcess`` uses of a ``subprocess.Popen``, for a child forked by the zygote.

    The child is the router's own (re-parented to it, a child subreaper), so it is waited for and
    signalled as a ``Popen`` child is: ``waitpid`` on its pid, and never a signal once reaped."""

    def __init__(self, pid: int, stdin: IO[bytes], stdout: IO[bytes],
                 stderr: IO[bytes] | None) -> None:
        self.pid = pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None

    def _reaped(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                self.returncode = 255
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reaped(os.WNOHANG)

    def wait(self) -> int:
        code = self._reaped(0)
        assert code is not None
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


HEALTH_EVERY = 0.2  # seconds between two asks of a health-checked child's endpoint
HEALTH_LOAD_TIMEOUT = 600.0  # seconds a health-checked child may take to answer 200 (default)


class HealthChecked(ChildProcess):
    """A child that does not speak the line protocol (ROUTER.md 7, seed 003): ready once its
    health endpoint answers 200, asked every ``HEALTH_EVERY`` s, killed if that takes longer than
    its load timeout. What the router reads of it is what a protocol child would say: ``loading``
    at once, ``ready`` when healthy, between its own output; its exit is still its exit. The
    core cannot tell it from any other child: the policy stays there, this is only a reading."""

    def __init__(self, child: ChildProcess, path: str, timeout: float) -> None:
        super().__init__(child.process, child.port, child.api_key)
        self.path = path if path.startswith("/") else f"/{path}"
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.said: list[bytes] = [format_message(LoadingState())]
        self.ready = False
        self.ends_line = True  # whether the child's own output so far ends with a newline
        self.next_ask = time.monotonic()

    async def read(self) -> bytes:
        while True:
            if self.said:
                line = self.said.pop(0)
                return line if self.ends_line else b"\n" + line
            if self.ready or self.process.poll() is not None:
                return await self._own()
            with anyio.move_on_after(max(0.0, self.next_ask - time.monotonic())):
                return await self._own()
            self.next_ask = time.monotonic() + HEALTH_EVERY
            if await self._healthy():
                self.ready = True
                self.said.append(format_message(ReadyState({})))
            elif time.monotonic() > self.deadline:
                self.ready = True  # nothing more to ask: its exit ends the load
                self.said.append(f"[router] not healthy at {self.path} within {self.timeout:g} s: "
                                 "killed\n".encode())
                self.kill()

    async def _own(self) -> bytes:
        data = await ChildProcess.read(self)
        if data:
            self.ends_line = data.endswith(b"\n")
        return data

    async def _healthy(self) -> bool:
        """Whether ``GET path`` on the child's port answers 200 (one short-lived connection)."""
        request = (f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                   f"Connection: close\r\n\r\n").encode()
        if self.api_key:
            request = request[:-2] + f"Authorization: Bearer {self.api_key}\r\n\r\n".encode()
        try:
            with anyio.fail_after(2):
                async with await anyio.connect_tcp("127.0.0.1", self.port) as stream:
                    await stream.send(request)
                    head = b""
                    while b"\r\n" not in head and len(head) < 1024:
                        head += await stream.receive()
        except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
            return False
        words = head.split(b"\r\n", 1)[0].split()
        return len(words) >= 2 and words[0].startswith(b"HTTP/") and words[1] == b"200"


ZYGOTE_TEMPLATE = ["{python}", "-m", "refimpl.child"]


class Zygote:
    """The router's end of ``refimpl/child/zygote.py``: a process with the reference child's
    imports done, which forks a child on demand (see that module for how, and why)."""

    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket,
                 log: Callable[[str], None]) -> None:
        self.process = process
        self.log = log
        self.control = control
        self.ready = False
        self.dead = False
        self.lock = anyio.Lock()

    @classmethod
    def start(cls, log: Callable[[str], None]) -> Zygote | None:
        """Start it (from the thread that lives as long as the router: ``die_with_parent``), or
        None where it cannot be: children are then started with ``Popen``."""
        from refimpl.child import zygote

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
            process = subprocess.Popen(
                [sys.executable, "-m", zygote.MARK, zygote.padding()], stdin=theirs.fileno(),
                env={**{k: v for k, v in os.environ.items() if k != "LLAMA_API_KEY"},
                     zygote.ROOM_ENV: zygote.padding()},  # the router's key, never
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                close_fds=True, bufsize=0, preexec_fn=die_with_parent())
        except OSError as exc:
            ours.close()
            log(f"[router] no zygote ({exc}): children are started one by one")
            return None
        finally:
            theirs.close()
        assert process.stderr is not None
        threading.Thread(target=_relay_stderr, args=(process.stderr, "[zygote] ", log),
                         daemon=True).start()
        ours.setblocking(False)
        return cls(process, ours, log)

    def _check_ready(self) -> bool:
        if not self.ready and not self.dead:
            try:
                message = self.control.recv(MAX_REPLY)
            except BlockingIOError:
                return False
            except OSError:
                message = b""
            self.ready = bool(message) and json.loads(message).get("ready") is True
            self.dead = not self.ready
        return self.ready and not self.dead

    async def _bury(self) -> None:
        """A zygote that closed its end is dying, or broken: kill it and reap it, once."""
        self.process.kill()
        await anyio.to_thread.run_sync(self.process.wait)
        self.control.close()
        self.log(f"[router] the zygote (pid {self.process.pid}) is gone "
                 f"({self.process.returncode}): children are started one by one")

    async def fork(self, cmd: list[str], env: dict[str, str], port: int,
                   log: Callable[[str], None]) -> ChildProcess | None:
        """The child ``cmd`` would start, forked; None if it cannot be (not ready yet, gone,
        or a command line or environment that does not fit), and the caller starts it."""
        from refimpl.child import zygote

        if cmd[:3] != [sys.executable, "-m", "refimpl.child"]:
            return None
        request = json.dumps({"argv": cmd[3:], "env": env, "cwd": os.getcwd(),
                              "router": os.getpid()}).encode()
        if len(b"\0".join(w.encode() for w in cmd)) >= zygote.ROOM or \
                sum(len(k) + len(v) + 2 for k, v in env.items()) > zygote.ROOM + sum(
                    len(k) + len(v) + 2 for k, v in os.environ.items()):
            return None
        async with self.lock:
            if not self._check_ready():
                if self.dead and self.process.returncode is None:
                    await self._bury()
                return None
            pipes = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr: (read, write)
            theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
            try:
                # Shielded: a reply left unread would be taken for the next child's.
                with anyio.CancelScope(shield=True):
                    self.control.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                      array.array("i", theirs))])
                    while True:
                        try:
                            reply = json.loads(self.control.recv(MAX_REPLY) or b"null")
                            break
                        except BlockingIOError:
                            await anyio.wait_readable(self.control)
            except OSError as exc:  # its end closed: it died
                log(f"[router] the zygote is unreachable: {exc}")
                reply = None
            except ValueError as exc:
                reply = {"error": str(exc)}
            finally:
                for fd in theirs:
                    os.close(fd)
            pid = reply.get("pid") if isinstance(reply, dict) else None
            if not isinstance(pid, int):
                for fd in (pipes[0][1], pipes[1][0], pipes[2][0]):
                    os.close(fd)
                if reply is None:
                    self.dead = True
                    await self._bury()
                log(f"[router] the zygote could not fork {cmd[3:]}: {reply}; starting it")
                return None
        stdin = os.fdopen(pipes[0][1], "wb", buffering=0)
        stdout = os.fdopen(pipes[1][0], "rb", buffering=0)
        stderr = os.fdopen(pipes[2][0], "rb", buffering=0)
        os.set_blocking(stdin.fileno(), False)
        os.set_blocking(stdout.fileno(), False)
        threading.Thread(target=_relay_stderr, args=(stderr, f"[{port}] ", log),
                         daemon=True).start()
        return ChildProcess(ForkedProcess(pid, stdin, stdout, stderr), port)  # type: ignore[arg-type]


MAX_REPLY = 65536


def _relay_stderr(pipe: IO[bytes], prefix: str, log: Callable[[str], None],
                  limit: LogLimit | None = None) -> None:
    """Log a child's stderr, line by line, until EOF (on a thread of its own).

    Kept apart from stdout, where the protocol lines come (ROUTER.md 2): in one shared pipe a log
    line written in pieces (llama-server writes its timestamp, then the message) can land in the
    middle of a protocol line, which then no longer starts with the prefix and is lost.

    What gets logged is bounded (``loglimit``): lines past the child's rate are counted, not
    logged, and a line longer than MAX_LOG_LINE is logged cut and the rest of it, up to its
    newline, dropped unread (a 200 MB line without a newline costs 8 KiB of log)."""
    fd = pipe.fileno()
    limit = LogLimit() if limit is None else limit
    pending = b""
    skipping = False  # in the rest of an over-long line: dropped up to its newline

    def emit(line: bytes, suffix: str = "") -> None:
        if limit.take(len(line), time.monotonic()):
            summary = limit.summary()
            if summary is not None:
                log(f"{prefix}[router] {summary}")
            log(prefix + cut(line.rstrip(b"\r").decode("utf-8", errors="replace")) + suffix)

    try:
        # Small reads: each relay thread holds its read's buffer while it waits for the child
        while chunk := os.read(fd, 4096):
            if skipping:
                newline = chunk.find(b"\n")
                if newline < 0:
                    continue
                chunk, skipping = chunk[newline + 1:], False
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                emit(line)
            if len(pending) > MAX_LOG_LINE:
                emit(pending[:MAX_LOG_LINE], " [cut: the rest of this line is not logged]")
                pending, skipping = b"", True
    except OSError:
        pass
    finally:
        if pending:
            emit(pending)
        summary = limit.summary()
        if summary is not None:
            log(f"{prefix}[router] {summary}")
        pipe.close()


def make_spawner(template: str, router_port: int, log: Callable[[str], None]
                 ) -> tuple[Callable[[Spawn], Awaitable[ChildProcess]], Callable[[], None]]:
    """A spawner for the driver, which starts the child for a model on a free port, and what
    prepares it, to be called as the router starts serving (on the thread that lives as long as
    the router; the first spawn does it otherwise): building a router starts no process.

    With the reference child's own template (``{python} -m refimpl.child``, any flags after it),
    preparing starts a ``Zygote``, and each child is forked from it once it is ready (a cold
    load without the child's 0.3 s of imports); before that, or if it fails, with ``Popen``.

    The core's reader sees the child's stdout: protocol lines become messages, the rest is logged
    with the child's port. Its stderr is logged apart (``_relay_stderr``). A child writes each
    protocol line in one write, which a pipe keeps whole.
    """

    async def spawn(command: Spawn) -> ChildProcess:
        model = command.model
        port = free_port()
        card = command.card
        cmd = child_command(card.child_cmd or template, model, card, port)
        # Never the router's key, but one of its own: without it anyone on this machine could
        # reach the child's port (in its world-readable command line) around the router's key.
        # In the environment, which only this user can read, not in the command line.
        key = secrets.token_urlsafe(32)
        env = dict(os.environ, LLAMA_SERVER_ROUTER_PORT=str(router_port), LLAMA_API_KEY=key)
        prepare()
        child = None if zygote is None else await zygote.fork(cmd, env, port, log)
        how = "forked" if child is not None else "started"
        if child is None:
            child = ChildProcess.start(cmd, env, port, log)
        child.api_key = key
        if card.health is not None:
            child = HealthChecked(child, card.health, HEALTH_LOAD_TIMEOUT
                                  if card.load_timeout is None else card.load_timeout)
            how += f", ready when {card.health} answers 200,"
        log(f"[router] {how} {model} (pid {child.pid}) on port {port}: {shlex.join(cmd)}")
        return child

    # The reference child, started as is, is forked from a zygote that has its imports done.
    zygote: Zygote | None = None
    prepared = False

    def prepare() -> None:
        nonlocal zygote, prepared
        if not prepared:
            prepared = True
            if shlex.split(template)[:3] == ZYGOTE_TEMPLATE:
                zygote = Zygote.start(log)

    return spawn, prepare


DOWNLOAD_MODE = "download"


def make_download_spawner(template: str, router_port: int, log: Callable[[str], None],
                          hf_token: str | None = None
                          ) -> Callable[[Spawn], Awaitable[ChildProcess]]:
    """A spawner of download children: ``template`` run with ``LLAMA_SERVER_CHILD_MODE=download``
    and ``LLAMA_ARG_HF_REPO=<user/repo:TAG>`` in its environment, as upstream starts them. It
    listens on no port; ``HF_ENDPOINT`` and the cache variables come from the router's
    environment; ``HF_TOKEN`` is the router's ``--hf-token`` when given (as upstream hands its
    token to the download)."""

    async def spawn(command: Spawn) -> ChildProcess:
        model = command.model
        cmd = [w.replace("{python}", sys.executable) for w in shlex.split(template)]
        env = dict(os.environ, LLAMA_SERVER_ROUTER_PORT=str(router_port),
                   LLAMA_SERVER_CHILD_MODE=DOWNLOAD_MODE, LLAMA_ARG_HF_REPO=model)
        env.pop("LLAMA_API_KEY", None)
        if hf_token is not None:
            env["HF_TOKEN"] = hf_token
        child = ChildProcess.start(cmd, env, 0, log)
        log(f"[router] started the download of {model} (pid {child.pid}): {shlex.join(cmd)}")
        return child

    return spawn
