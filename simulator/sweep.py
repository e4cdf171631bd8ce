"""``python -m simulator sweep``: many seeds, each checked against every guarantee, in batches
that run in this process or on dask workers (``simulator/distributed.py``).

What it prints on stdout does not depend on where the batches ran: failing seeds stream out in
seed order (a batch that ends early waits for the ones before it), each with its replay command,
then a count. The progress bar, where the batches run and the throughput go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from itertools import chain

from properties.mutants import mutated

from .distributed import default_workers, executor, in_order
from .progress import Progress

# The options that tell where a sweep runs, not what it runs: left out of what a batch carries.
WHERE = ("scheduler", "workers", "batch", "func")
# Seconds of work below which a sweep without --workers stays in this process: a LocalCluster
# takes a few seconds to start (more on a busy machine), and each worker imports everything anew.
LOCAL_ENOUGH = 10.0


@dataclass(frozen=True)
class Failure:
    seed: int
    violations: tuple[str, ...]


@dataclass(frozen=True)
class Batch:
    """Seeds ``first .. first + count - 1`` under the run options ``options`` (the parsed
    command line, as a plain dict so that it pickles without the parser's functions)."""
    options: dict[str, object]
    first: int
    count: int


def check_batch(batch: Batch) -> list[Failure]:
    """Run and check every seed of ``batch``; the failing ones. Runs on a worker, so it applies
    the run's mutants itself (a no-op where the command line's ``main`` already did)."""
    from .cli import RunSpec, _check as check

    args = argparse.Namespace(**batch.options)
    spec = RunSpec(args)
    failing = []
    with mutated(*args.mutant):
        for seed in range(batch.first, batch.first + batch.count):
            sim = spec.simulation(seed, record=True)
            violations = check(sim.run(), sim.config)
            if violations:
                failing.append(Failure(seed, tuple(violations)))
    return failing


def batches(args: argparse.Namespace) -> list[Batch]:
    options = {k: v for k, v in vars(args).items() if k not in WHERE}
    end = args.first_seed + args.seeds
    return [Batch(options, first, min(args.batch, end - first))
            for first in range(args.first_seed, end, args.batch)]


def describe(failure: Failure, replay: str) -> str:
    more = len(failure.violations) - 1
    return (f"seed {failure.seed}: {failure.violations[0]}" + (f" (+{more} more)" if more else "")
            + f"\n  replay: {replay}")


def say(text: str) -> None:
    print(text, flush=True)


def stays_local(first_batch: float, batches_left: int) -> bool:
    """Whether the rest of a sweep, ``batches_left`` batches like the first (``first_batch``
    seconds), ends sooner on this core than a LocalCluster takes to start."""
    return first_batch * batches_left < LOCAL_ENOUGH


def sweep(args: argparse.Namespace) -> int:
    from .cli import RunSpec

    spec = RunSpec(args)
    units = batches(args)
    started = time.perf_counter()
    failing = 0
    workers = args.workers
    progress = Progress(args.seeds, "seeds")
    done_here: list[tuple[int, list[Failure]]] = []
    if workers is None:
        workers = default_workers()
        if args.scheduler is None and len(units) > 1:
            # Time the first batch here: a sweep whose rest would end sooner on one core than
            # workers take to start stays in this process.
            done_here.append((0, check_batch(units[0])))
            progress.advance(units[0].count, len(done_here[0][1]))
            if stays_local(time.perf_counter() - started, len(units) - 1):
                workers = 0
    rest = units[len(done_here):]
    with executor(args.scheduler, workers, len(rest)) as where:
        progress.note(f"{args.seeds} seeds in {len(units)} batch(es) of up to {args.batch}, "
                      f"{where.where}")

        def arrived(i: int, failures: list[Failure]) -> None:
            if i >= len(done_here):
                progress.advance(units[i].count, len(failures))

        results = chain(done_here, ((i + len(done_here), failures)
                                    for i, failures in where.map_unordered(check_batch, rest)))
        try:
            for _, failures in in_order(results, arrived):
                for failure in failures:
                    progress.note(describe(failure, spec.replay_command(failure.seed)), say)
                failing += len(failures)
        finally:
            progress.close()
    wall = time.perf_counter() - started
    print(f"{args.seeds} seeds, {failing} failing")
    print(f"{args.seeds} seeds in {wall:.1f} s wall, {args.seeds / max(wall, 1e-9):.1f} seeds/s",
          file=sys.stderr)
    return 1 if failing else 0
