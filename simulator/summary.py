"""The figures of one run, read off the one replay of a trace (``properties.replay``), so that a
load, an eviction, a failure and a lost request mean here what they mean to the invariants."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from properties.replay import Child, Replay
from refimpl.core.commands import Spawn
from refimpl.core.config import RouterConfig
from refimpl.core.events import ChildExited
from refimpl.core.trace import At, Item


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Summary:
    """Fed every entry of a run as it happens (``observe``); the figures are read at the end.

    A load is a model child spawned (downloads apart); an eviction, a child the router stopped
    for room (``Child.stop == "evicted"``: not an unload, a removal or a catalog change); a
    request is ok when its response ended ok, failed by its child when it did not, gone when its
    client left first, an error when the router answered it, lost when none of these happened."""

    config: RouterConfig
    running_high: int = 0
    memory_high: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.replay = Replay(self.config)

    def observe(self, t: float, item: Item) -> None:
        self.replay.step(At(t, item))
        kind = type(item)
        if kind is Spawn or kind is ChildExited:
            running = self._running()
            self.running_high = max(self.running_high, len(running))
            used: Counter[str] = Counter()
            for child in running:
                used.update(child.memory)
            for device, need in used.items():
                self.memory_high[device] = max(self.memory_high.get(device, 0), need)

    def _running(self) -> list[Child]:
        return [c for c in self.replay.children.values() if not c.download]

    @property
    def requests(self) -> int:
        return sum(1 for r in self.replay.requests.values() if r.kind == "request")

    @property
    def ok(self) -> int:
        return sum(1 for r in self.replay.requests.values()
                   if r.kind == "request" and not r.gone and r.ok)

    @property
    def gone(self) -> int:
        return sum(1 for r in self.replay.requests.values() if r.kind == "request" and r.gone)

    @property
    def errors(self) -> Counter[str]:
        """Requests answered with an error, by the error's kind; ``child_failed`` for those
        whose response their child broke off."""
        out: Counter[str] = Counter()
        for r in self.replay.requests.values():
            if r.kind != "request" or r.gone:
                continue
            if r.reply is not None:
                out[r.reply.kind] += 1
            elif r.ok is False:
                out["child_failed"] += 1
        return out

    @property
    def lost(self) -> int:
        """Requests with no answer at all (read after the run)."""
        return sum(1 for r in self.replay.requests.values()
                   if r.kind == "request" and not r.ended)

    @property
    def loads(self) -> int:
        return sum(1 for c in self.replay.every_child.values() if not c.download)

    @property
    def evictions(self) -> int:
        return sum(1 for c in self.replay.every_child.values() if c.stop == "evicted")

    @property
    def downloads(self) -> int:
        return sum(1 for c in self.replay.every_child.values() if c.download)

    @property
    def waits(self) -> list[float]:
        """Arrival to forward, for each forwarded request."""
        return [r.decided_at - r.arrived for r in self.replay.requests.values()
                if r.kind == "request" and r.instance is not None and r.decided_at is not None]

    def report(self) -> str:
        served = self.ok
        errors = self.errors
        waits = self.waits
        lines = [
            f"requests        {self.requests}",
            f"  ok            {served}",
            f"  errors        {sum(errors.values())}"
            + (f"  ({', '.join(f'{k}: {v}' for k, v in sorted(errors.items()))})"
               if errors else ""),
            f"  client gone   {self.gone}",
            f"  lost          {self.lost}",
            f"loads           {self.loads}",
            f"evictions       {self.evictions}",
            f"loads/served    {self.loads / served:.4f}" if served else "loads/served    n/a",
            f"queue wait p50  {percentile(waits, 0.5):.3f} s",
            f"queue wait p99  {percentile(waits, 0.99):.3f} s",
            f"running high    {self.running_high} (models_max {self.config.models_max})",
        ]
        for device in sorted(self.memory_high):
            cap = self.config.devices.get(device)
            lines.append(f"memory high     {device}: {self.memory_high[device]}"
                         + (f" of {cap}" if cap is not None else ""))
        return "\n".join(lines)
