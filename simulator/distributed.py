"""Where a long run's independent units run: in this process, on a dask ``LocalCluster``, or on a
dask cluster started with the standard ``dask scheduler`` / ``dask worker`` commands.

A *unit* is one call of a module-level function on picklable arguments (a batch of simulator
seeds, one pytest run of the bug zoo). Callers hand :func:`executor`'s result a function and a
list of arguments and get ``(index, result)`` pairs back as units end, in any order; they put
them back in order themselves, so what they print is the same wherever the units ran.

dask is an optional dependency (the ``dask`` extra): without it, runs stay in this process.
Every unit sent to a cluster carries a fingerprint of this checkout's code; a worker that runs
other code refuses it (:class:`CodeMismatch`), since its results would not replay here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The packages whose code decides a unit's result; a worker must run the same files.
PACKAGES = ("refimpl", "simulator", "properties", "fixtures")
INSTALL_HINT = "pip install 'llama-router-harness[dask]'"
# How long to wait for a remote scheduler to answer, and for its first worker, before giving up.
CONNECT_TIMEOUT = 30.0


class CodeMismatch(RuntimeError):
    pass


class Executor(Protocol):
    where: str  # for the user: "in this process", "on a LocalCluster of 2 worker(s)", ...

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        """``(i, fn(items[i]))`` for every item, each as soon as it is ready."""
        ...


class InProcess:
    where = "in this process"

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        for i, item in enumerate(items):
            yield i, fn(item)


class OnDask:
    def __init__(self, client: Any, where: str) -> None:
        self.client = client
        self.where = where

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        from distributed import as_completed

        expected = fingerprint()
        # pure=False: two equal units (a rerun) are two runs, not one cached result.
        futures = {self.client.submit(_checked, expected, fn, item, pure=False): i
                   for i, item in enumerate(items)}
        try:
            for future in as_completed(futures):  # type: ignore[no-untyped-call]
                yield futures[future], future.result()
        finally:
            # A unit that raised, or Ctrl-C: the rest are not wanted any more (unless the client
            # is closed already, which drops them anyway).
            left = [f for f in futures if not f.done()]
            if left and self.client.status == "running":
                self.client.cancel(left)


def in_order(pairs: Iterable[tuple[int, R]],
             arrived: Callable[[int, R], None] | None = None) -> Iterator[tuple[int, R]]:
    """``pairs`` (from :meth:`Executor.map_unordered`) by index, each as soon as every one before
    it has come; ``arrived`` is called on each as it comes (for a progress bar)."""
    waiting: dict[int, R] = {}
    following = 0
    for i, result in pairs:
        if arrived is not None:
            arrived(i, result)
        waiting[i] = result
        while following in waiting:
            yield following, waiting.pop(following)
            following += 1


def _checked(expected: str, fn: Callable[[T], R], item: T) -> R:
    """Runs on a worker: ``fn(item)``, if the worker runs this checkout's code."""
    mine = fingerprint()
    if mine != expected:
        raise CodeMismatch(
            f"worker runs other code (fingerprint {mine[:12]}, the client's {expected[:12]}): "
            f"install the same version of llama-router-harness on every worker")
    return fn(item)


_fingerprint: str | None = None


def fingerprint() -> str:
    """A hash of the ``.py`` files of :data:`PACKAGES` as this process imports them."""
    global _fingerprint
    if _fingerprint is None:
        digest = hashlib.sha256()
        for package in PACKAGES:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                continue
            root = Path(spec.origin).parent
            for path in sorted(root.rglob("*.py")):
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
        _fingerprint = digest.hexdigest()
    return _fingerprint


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def dask_available() -> bool:
    return importlib.util.find_spec("distributed") is not None


@contextlib.contextmanager
def executor(scheduler: str | None, workers: int, units: int) -> Iterator[Executor]:
    """Where ``units`` units will run: the cluster at ``scheduler``; else this process when
    ``workers`` is 0 or there is at most one unit (starting workers would only cost time); else
    a ``LocalCluster`` of ``min(workers, units)`` single-threaded worker processes on loopback.
    Without dask installed, a ``scheduler`` is an error and the rest runs in this process."""
    if scheduler is None and (workers == 0 or units <= 1):
        yield InProcess()
        return
    if not dask_available():
        if scheduler is not None:
            raise SystemExit(f"--scheduler needs dask.distributed: {INSTALL_HINT}")
        print(f"dask is not installed, so this runs in one process ({INSTALL_HINT})",
              file=sys.stderr)
        yield InProcess()
        return
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)  # type: ignore[no-untyped-call]
        except (OSError, ValueError) as exc:  # unreachable, or not an address at all
            raise SystemExit(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
        with client:
            try:  # units sent to a scheduler without workers would wait forever
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            except TimeoutError:
                raise SystemExit(f"no worker joined the dask scheduler at {scheduler} within "
                                 f"{CONNECT_TIMEOUT:g} s; start some with "
                                 f"`dask worker {scheduler}`") from None
            yield OnDask(client, f"on the scheduler at {scheduler}")
        return
    n = min(workers, units)
    # One thread per worker: the units are pure-Python CPU work (or a child process to wait
    # for), and one thread keeps the GIL to itself. Everything on loopback; the scheduler's HTTP
    # server (which starts even without a dashboard) on a free port, not a fixed 8787 that a
    # second sweep would collide on.
    # No statistical profiler in the workers: it samples every 10 ms for a dashboard nobody
    # looks at here (set DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False on remote workers).
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
        yield OnDask(client, f"on a LocalCluster of {n} worker(s)")
