"""``python -m refimpl.child.zygote``: the reference child imported once, then forked per model.

A cold load through the router used to be mostly imports: a fresh ``python -m refimpl.child``
spends 0.25-0.4 s importing llama-cpp-python (with numpy), pydantic, Starlette and uvicorn before
its 20 ms load. The router starts this process once, when it starts (``Zygote`` in
``refimpl/router/processes.py``); it imports all of that and waits. For each child the router
sends, over the control socket on its stdin, the child's arguments, environment and working
directory, with the child's stdin, stdout and stderr pipes (``SCM_RIGHTS``). The zygote forks
twice: the grandchild becomes the child, the middle process exits at once, so the grandchild is
re-parented to the router, which is a child subreaper (``PR_SET_CHILD_SUBREAPER``). To the router
it is then a child like one it started with ``Popen``: its own pid, waited for with ``waitpid``,
killed by pid, dying with the router (``PR_SET_PDEATHSIG``, set once it has been re-parented: the
kernel sends that signal at the re-parenting itself), in a session of its own. Its command line
(``/proc/PID/cmdline``, what ``ps`` shows) is rewritten to the one it would have had if started
with ``Popen``, in the room left by the zygote's padding argument.

What the fork cannot give is refused, and the router starts that child the old way: a command
line longer than the room, an environment too large for one message, a zygote that has died.

The zygote itself is single-threaded and never loads a model, so forking it is safe (no lock held
by another thread, no OpenMP pool). It ends when the router closes the control socket or dies.
"""

from __future__ import annotations

import array
import ctypes
import io
import json
import os
import random
import signal
import socket
import sys
import time
from typing import Any, NoReturn

MARK = "refimpl.child.zygote"  # in the zygote's command line: a helper, holding no model
ROOM = 4096  # bytes of command line a forked child may have (the padding argument's length)
MAX_MESSAGE = 1 << 20
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
REPARENT_SECONDS = 5.0


ROOM_ENV = "REFIMPL_ZYGOTE_ROOM"  # in the zygote's environment: room for a child's


def padding() -> str:
    """The zygote's last argument (and the value of ``ROOM_ENV`` in its environment): room for
    a child's command line (and what its environment has more than the router's)."""
    return "-" * ROOM


def _stat_field(index: int) -> int:
    """Field ``index`` (1-based, as proc(5) numbers them) of /proc/self/stat."""
    text = open("/proc/self/stat", "rb").read()
    fields = text[text.rindex(b")") + 2:].split()
    return int(fields[index - 3])


def _rewrite(start_field: int, end_field: int, words: list[str]) -> bool:
    """Make the memory between two addresses of /proc/self/stat (proc(5): ``arg_start`` and
    ``arg_end``, ``env_start`` and ``env_end``) hold ``words``, each ended by a NUL, the rest
    NULs; False, and nothing written, if they do not fit."""
    start, end = _stat_field(start_field), _stat_field(end_field)
    data = b"".join(w.encode() + b"\0" for w in words)
    if not data or len(data) > end - start or any("\0" in w for w in words):
        return False
    ctypes.memmove(start, data + b"\0" * (end - start - len(data)), end - start)
    return True


def rewrite_cmdline(argv: list[str]) -> bool:
    """/proc/self/cmdline (what ``ps`` shows) to read ``argv``, in the room the process's own
    arguments take."""
    return _rewrite(48, 49, argv)


def rewrite_environ(env: dict[str, str]) -> bool:
    """/proc/self/environ to read ``env``, in the room the process's first environment takes.
    Only once ``os.environ`` holds ``env``: libc's ``environ`` then points at copies, never into
    that memory."""
    return _rewrite(50, 51, [f"{k}={v}" for k, v in env.items()])


def _fresh_stdio() -> None:
    """New ``sys.stdin``/``stdout``/``stderr`` over descriptors 0-2, as a started interpreter
    has: the zygote's own objects carry its buffers and locks into the fork."""
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        old = getattr(sys, name)
        new = io.TextIOWrapper(open(fd, mode + "b", closefd=False), encoding=old.encoding,
                               errors=old.errors, line_buffering=name == "stderr",
                               write_through=name == "stderr")
        setattr(sys, name, new)
        setattr(sys, f"__{name}__", new)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, another user's
        pass
    return True


def _become_child(request: dict[str, Any], fds: list[int], control: socket.socket) -> NoReturn:
    """In the grandchild: wait to be the router's, then turn into ``python -m refimpl.child``."""
    code = 70
    try:
        os.setsid()
        router = int(request["router"])
        middle = os.getppid()
        deadline = time.monotonic() + REPARENT_SECONDS
        while (parent := os.getppid()) != router:  # the middle process exits; we go to the router
            # re-parented to another (init): the router, the subreaper, died meanwhile
            if parent != middle or time.monotonic() > deadline or not _alive(router):
                os._exit(code)
            time.sleep(0.0002)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != router:  # the router died before prctl ran
            os.kill(os.getpid(), signal.SIGKILL)
        control.detach()  # its descriptor (0) is about to be the child's stdin
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
        _fresh_stdio()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        rewrite_environ(request["env"])
        argv = [str(a) for a in request["argv"]]
        rewrite_cmdline([sys.executable, "-m", "refimpl.child", *argv])
        sys.argv = [sys.argv[0], *argv]
        random.seed()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from refimpl.child.__main__ import main

        code = main()
    except SystemExit as exc:  # argparse's exit on a bad flag: 2, as a started child's
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def fork_child(request: dict[str, Any], fds: list[int], control: socket.socket) -> int:
    """Fork the child ``request`` describes, re-parented away from us; its pid."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            child = os.fork()
            if child == 0:
                os.close(write_end)
                _become_child(request, fds, control)
            os.write(write_end, str(child).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        data = b""
        while chunk := os.read(read_end, 64):
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(middle, 0)
    if not data:
        raise OSError("the fork did not report its child")
    return int(data)


def preload() -> None:
    """Everything a child imports before it serves (``__main__``, then ``runtime``, ``server``)."""
    import llama_cpp

    from refimpl.child import __main__, runtime, server  # noqa: F401

    # ggml's one-time set-up (its tables, the backends' registry): 36 ms of each child's load
    # otherwise. It starts no thread.
    llama_cpp.llama_backend_init()


def main() -> int:
    control = socket.socket(fileno=0)
    preload()
    try:
        control.send(b'{"ready": true}')
    except OSError:  # the router is gone already
        return 0
    print(f"ready: children are forked from pid {os.getpid()}", file=sys.stderr, flush=True)
    fd_room = socket.CMSG_SPACE(3 * array.array("i").itemsize)
    while True:
        try:
            message, ancillary, _flags, _addr = control.recvmsg(MAX_MESSAGE, fd_room)
        except (ConnectionError, OSError):
            return 0
        if not message:
            return 0  # the router closed the socket, or died
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(data[:len(data) - len(data) % got.itemsize])
                fds.extend(got)
        try:
            if len(fds) != 3:
                raise OSError(f"{len(fds)} descriptors sent, 3 wanted")
            reply: dict[str, Any] = {"pid": fork_child(json.loads(message), fds, control)}
        except (OSError, ValueError, KeyError) as exc:
            reply = {"error": str(exc)}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            control.send(json.dumps(reply).encode())
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(main())
