"""Request arrival patterns. Each workload is a generator of arrivals drawn from the run's rng."""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass, replace
from typing import Callable, Iterator


@dataclass(frozen=True, slots=True)
class Arrival:
    """One client request: when, for which model, how long the child takes to answer it, and
    after how long the client gives up (``None``: never)."""

    t: float
    model: str
    service: float
    patience: float | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """``rate`` requests per second over ``models`` models, each taking ``service`` seconds on
    average; ``long_fraction`` of them are long streams of ``long_service`` seconds, and
    ``disconnect_fraction`` of the clients give up after a short, random patience."""

    name: str
    models: int = 4
    rate: float = 1.0
    service: float = 0.2
    long_fraction: float = 0.0
    long_service: float = 30.0
    disconnect_fraction: float = 0.0

    def model_names(self) -> list[str]:
        return [f"m{i}" for i in range(self.models)]

    def arrivals(self, rng: random.Random, duration: float) -> Iterator[Arrival]:
        return _GENERATORS[self.name](self, rng, duration)

    def _request(self, rng: random.Random, t: float, model: str) -> Arrival:
        if self.long_fraction and rng.random() < self.long_fraction:
            service = rng.uniform(0.5, 1.5) * self.long_service
        else:
            # capped: a draw of 1e300 seconds (hypothesis tries such things) is no workload
            service = min(rng.expovariate(1.0 / self.service), 50.0 * self.service)
        patience = None
        if self.disconnect_fraction and rng.random() < self.disconnect_fraction:
            patience = rng.uniform(0.05, 3.0)
        return Arrival(t, model, service, patience)


def _poisson_times(w: Workload, rng: random.Random, duration: float) -> Iterator[float]:
    t = 0.0
    while True:
        t += rng.expovariate(w.rate)
        if t >= duration:
            return
        yield t


def _alternating(w: Workload, rng: random.Random, duration: float) -> Iterator[Arrival]:
    """A/B: requests alternate between the first two models (the thrash trigger, Z1)."""
    names = w.model_names()[:2]
    for i, t in enumerate(_poisson_times(w, rng, duration)):
        yield w._request(rng, t, names[i % len(names)])


def _uniform(w: Workload, rng: random.Random, duration: float) -> Iterator[Arrival]:
    names = w.model_names()
    for t in _poisson_times(w, rng, duration):
        yield w._request(rng, t, rng.choice(names))


def _zipf(w: Workload, rng: random.Random, duration: float) -> Iterator[Arrival]:
    """Model i is asked with weight 1 / (i + 1): a few hot models and a long tail."""
    names = w.model_names()
    cumulative = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(names))))
    total = cumulative[-1]
    for t in _poisson_times(w, rng, duration):
        k = bisect.bisect_left(cumulative, rng.random() * total)
        yield w._request(rng, t, names[min(k, len(names) - 1)])


def _bursts(w: Workload, rng: random.Random, duration: float) -> Iterator[Arrival]:
    """Bursts of simultaneous requests for several models (Z3, Z7, Z10 triggers)."""
    names = w.model_names()
    t = 0.0
    mean_burst = 2.0 * len(names)
    while True:
        t += rng.expovariate(w.rate / mean_burst)
        if t >= duration:
            return
        for _ in range(1 + int(rng.expovariate(1.0 / mean_burst))):
            yield w._request(rng, t, rng.choice(names))


def _streams(w: Workload, rng: random.Random, duration: float) -> Iterator[Arrival]:
    """Long streams on one model while others are asked for (Z2, Z19 triggers)."""
    names = w.model_names()
    for t in _poisson_times(w, rng, duration):
        model = rng.choice(names)
        if rng.random() < max(w.long_fraction, 0.3):
            yield Arrival(t, model, rng.uniform(0.5, 1.5) * w.long_service, None)
        else:
            yield w._request(rng, t, model)


def _disconnects(w: Workload, rng: random.Random, duration: float) -> Iterator[Arrival]:
    """Uniform traffic where at least 30% of the clients give up early, often while queued."""
    return _uniform(replace(w, disconnect_fraction=max(0.3, w.disconnect_fraction)), rng, duration)


_GENERATORS: dict[str, Callable[[Workload, random.Random, float], Iterator[Arrival]]] = {
    "ab": _alternating,
    "uniform": _uniform,
    "zipf": _zipf,
    "burst": _bursts,
    "streams": _streams,
    "disconnects": _disconnects,
}
WORKLOADS = tuple(_GENERATORS)


def make_workload(name: str, models: int, rate: float, **options: float) -> Workload:
    if name not in _GENERATORS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    if models < 1:
        raise ValueError("a workload needs at least one model")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests per second, not {rate}")
    return Workload(name, models=models, rate=rate, **options)
