"""The figures of one run, gathered in one pass over its events and commands."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from refimpl.core.commands import Forward, Kill, Reply, SendExit, Spawn
from refimpl.core.config import RouterConfig
from refimpl.core.events import (EVENT_TYPES, ChildExited, ClientGone, RequestArrived,
                                 ResponseEnded, UnloadAsked)
from refimpl.core.trace import Item


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Summary:
    config: RouterConfig
    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    gone: int = 0
    loads: int = 0
    evictions: int = 0
    downloads: int = 0
    running_high: int = 0
    memory_high: dict[str, int] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    _arrived: dict[int, float] = field(default_factory=dict)
    _running: dict[int, str] = field(default_factory=dict)
    _memory: dict[str, int] = field(default_factory=dict)
    _stopped: set[int] = field(default_factory=set)
    _downloads: set[int] = field(default_factory=set)
    _cause: object = None

    def __post_init__(self) -> None:
        self._specs = {spec.name: spec for spec in self.config.models}

    def observe(self, t: float, item: Item) -> None:
        kind = type(item)
        if kind in EVENT_TYPES:
            self._cause = item
        if kind is RequestArrived:
            assert isinstance(item, RequestArrived)
            self.requests += 1
            self._arrived[item.req] = t
        elif kind is Forward:
            assert isinstance(item, Forward)
            arrived = self._arrived.get(item.req)
            if arrived is not None:
                self.waits.append(t - arrived)
        elif kind is ResponseEnded:
            assert isinstance(item, ResponseEnded)
            if self._arrived.pop(item.req, None) is not None:
                if item.ok:
                    self.ok += 1
                else:
                    self.errors["child_failed"] += 1
        elif kind is Reply:
            assert isinstance(item, Reply)
            if self._arrived.pop(item.req, None) is not None:
                self.errors[item.kind] += 1
        elif kind is ClientGone:
            assert isinstance(item, ClientGone)
            if self._arrived.pop(item.req, None) is not None:
                self.gone += 1
        elif kind is Spawn:
            assert isinstance(item, Spawn)
            if item.download:  # takes no slot and no memory
                self.downloads += 1
                self._downloads.add(item.instance)
                return
            self.loads += 1
            self._running[item.instance] = item.model
            self.running_high = max(self.running_high, len(self._running))
            spec = self._specs.get(item.model)
            for device, need in (spec.memory if spec else {}).items():
                used = self._memory[device] = self._memory.get(device, 0) + need
                self.memory_high[device] = max(self.memory_high.get(device, 0), used)
        elif kind is SendExit or kind is Kill:
            assert isinstance(item, (SendExit, Kill))
            if item.instance not in self._stopped and item.instance not in self._downloads:
                self._stopped.add(item.instance)
                if not isinstance(self._cause, UnloadAsked):
                    self.evictions += 1
        elif kind is ChildExited:
            assert isinstance(item, ChildExited)
            model = self._running.pop(item.instance, None)
            self._stopped.discard(item.instance)
            self._downloads.discard(item.instance)
            spec = self._specs.get(model) if model is not None else None
            if spec is not None:
                for device, need in spec.memory.items():
                    self._memory[device] -= need

    @property
    def lost(self) -> int:
        """Requests with no answer at all (call after the run)."""
        return len(self._arrived)

    def report(self) -> str:
        served = self.ok
        lines = [
            f"requests        {self.requests}",
            f"  ok            {self.ok}",
            f"  errors        {sum(self.errors.values())}"
            + (f"  ({', '.join(f'{k}: {v}' for k, v in sorted(self.errors.items()))})"
               if self.errors else ""),
            f"  client gone   {self.gone}",
            f"  lost          {self.lost}",
            f"loads           {self.loads}",
            f"evictions       {self.evictions}",
            f"loads/served    {self.loads / served:.4f}" if served else "loads/served    n/a",
            f"queue wait p50  {percentile(self.waits, 0.5):.3f} s",
            f"queue wait p99  {percentile(self.waits, 0.99):.3f} s",
            f"running high    {self.running_high} (models_max {self.config.models_max})",
        ]
        for device in sorted(self.memory_high):
            cap = self.config.devices.get(device)
            lines.append(f"memory high     {device}: {self.memory_high[device]}"
                         + (f" of {cap}" if cap is not None else ""))
        return "\n".join(lines)
