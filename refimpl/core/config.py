"""What the router core is configured with: the models it knows and its limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

POLICIES = ("fifo", "naive-lru", "drain-timeout")
DEFAULT_POLICY = "fifo"


def _frozen(mapping: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class Card:
    """A model as its source describes it: what its child is started with, and what
    ``GET /models`` shows of it beside its state. The core keeps it with the spec and hands it
    on (in ``Spawn`` and in ``Listed``); it decides nothing by it."""

    source: str = ""  # "models_dir", "preset" or "cache"; "" for a model configured in code
    path: str | None = None  # the GGUF file
    mmproj: str | None = None
    args: tuple[str, ...] = ()  # the child's own flags
    tags: tuple[str, ...] = ()
    hidden: bool = False  # routed, not listed (a cache model that a preset deduplicates)
    architecture: Mapping[str, tuple[str, ...]] | None = None  # modalities, as the files say
    # A backend of its own (ROUTER.md 7): its command template (None: the router's --child-cmd)
    # and, for one that does not speak the line protocol, the path that answers 200 once it is
    # ready, and how long its load may take.
    child_cmd: str | None = None
    health: str | None = None
    load_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.architecture is not None:
            object.__setattr__(self, "architecture", MappingProxyType(
                {k: tuple(v) for k, v in self.architecture.items()}))

    def __reduce__(self) -> tuple[Any, ...]:  # a mappingproxy does not pickle: a dict does
        arch = None if self.architecture is None else dict(self.architecture)
        return (Card, (self.source, self.path, self.mmproj, self.args, self.tags, self.hidden,
                       arch, self.child_cmd, self.health, self.load_timeout))

    def __repr__(self) -> str:
        arch = None if self.architecture is None else dict(self.architecture)
        return (f"Card(source={self.source!r}, path={self.path!r}, mmproj={self.mmproj!r}, "
                f"args={self.args!r}, tags={self.tags!r}, hidden={self.hidden!r}, "
                f"architecture={arch!r}, child_cmd={self.child_cmd!r}, "
                f"health={self.health!r}, load_timeout={self.load_timeout!r})")


@dataclass(frozen=True, slots=True)
class Group:
    """A group of models (ROUTER.md 7, preset ``group = NAME`` and ``[group:NAME]``): its
    members may run together; loading one first stops the running models outside it. ``swap``:
    at most one member runs at a time (the others are outside too). ``persistent``: its
    members are never stopped to make room for another group (count, memory and TTL still end
    them)."""

    name: str
    swap: bool = False
    persistent: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a group needs a name")

    def __repr__(self) -> str:
        flags = "".join(f", {k}=True" for k, v in (("swap", self.swap),
                                                    ("persistent", self.persistent)) if v)
        return f"Group({self.name!r}{flags})"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model the router can load.

    ``memory`` is the model's need in bytes per device, estimated before its first load; a device it
    does not name costs it nothing. ``launch`` says what is started for it (file, flags): when a
    catalog change alters it, a running child of the model is stale and is unloaded. ``card``:
    its source's description, carried for the driver and the listing.
    """

    name: str
    aliases: tuple[str, ...] = ()
    memory: Mapping[str, int] = field(default_factory=dict)
    stop_timeout: float = 10.0
    load_on_startup: bool = False
    launch: tuple[str, ...] = ()
    card: Card = Card()
    ttl: float | None = None
    pin: bool = False
    concurrency: int = 0
    group: Group | None = None  # None: its own group (ROUTER.md 7)

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory", _frozen(self.memory))
        if self.stop_timeout < 0:
            raise ValueError(f"model {self.name!r}: stop_timeout must be >= 0")
        if self.ttl is not None and self.ttl < 0:
            raise ValueError(f"model {self.name!r}: ttl must be >= 0 (0 means never)")
        if self.concurrency < 0:
            raise ValueError(f"model {self.name!r}: concurrency must be >= 0 (0: no limit)")
        if any(v < 0 for v in self.memory.values()):
            raise ValueError(f"model {self.name!r}: memory needs must be >= 0")

    def __reduce__(self) -> tuple[Any, ...]:  # traces are pickled (--trace)
        return (ModelSpec, (self.name, self.aliases, dict(self.memory), self.stop_timeout,
                            self.load_on_startup, self.launch, self.card, self.ttl, self.pin,
                            self.concurrency, self.group))

    def __repr__(self) -> str:
        policies = "".join(f", {name}={value!r}" for name, value, off in (
            ("ttl", self.ttl, None), ("pin", self.pin, False),
            ("concurrency", self.concurrency, 0), ("group", self.group, None)) if value != off)
        return (f"ModelSpec(name={self.name!r}, aliases={self.aliases!r}, "
                f"memory={dict(self.memory)!r}, stop_timeout={self.stop_timeout!r}, "
                f"load_on_startup={self.load_on_startup!r}, launch={self.launch!r}"
                + (f", card={self.card!r}" if self.card != Card() else "") + policies + ")")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Limits and policy. ``models_max`` 0 means unlimited; ``devices`` empty means no budget.

    ``devices`` maps a device name to the bytes available to models on it (free memory at start
    minus the margin). ``drain_timeout`` is used only by the ``drain-timeout`` policy.
    ``ttl``: seconds a model may stay idle before it is unloaded, for models whose spec says
    nothing (``--models-ttl``; 0: never). ``queue_max``: at most that many requests wait at
    once; one more is answered 429 (``--queue-max``; 0: no limit).
    """

    models: tuple[ModelSpec, ...]
    models_max: int = 4
    devices: Mapping[str, int] = field(default_factory=dict)
    autoload: bool = True
    policy: str = DEFAULT_POLICY
    drain_timeout: float = 30.0
    ttl: float = 0.0
    queue_max: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", _frozen(self.devices))
        if self.models_max < 0:
            raise ValueError("models_max must be >= 0 (0 means unlimited)")
        if self.ttl < 0:
            raise ValueError("ttl must be >= 0 (0 means never)")
        if self.queue_max < 0:
            raise ValueError("queue_max must be >= 0 (0 means unlimited)")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; known: {', '.join(POLICIES)}")
        groups_of(self.models)  # one group name, one setting
        names: set[str] = set()
        for spec in self.models:
            for name in (spec.name, *spec.aliases):
                if name in names:
                    raise ValueError(f"model name or alias {name!r} is used twice")
                names.add(name)

    def __repr__(self) -> str:
        return (f"RouterConfig(models={self.models!r}, models_max={self.models_max!r}, "
                f"devices={dict(self.devices)!r}, autoload={self.autoload!r}, "
                f"policy={self.policy!r}, drain_timeout={self.drain_timeout!r}"
                + (f", ttl={self.ttl!r}" if self.ttl else "")
                + (f", queue_max={self.queue_max!r}" if self.queue_max else "") + ")")

    @property
    def groups(self) -> Mapping[str, Group]:
        """The groups its models name, by name (empty: groups are not in use)."""
        return groups_of(self.models)

    def ttl_of(self, spec: ModelSpec) -> float:
        """The seconds ``spec``'s model may stay idle before it is unloaded (0: never): its own
        ``ttl``, else the router's, which a pinned model does not take (pinning it says keep
        it; only its own ``ttl`` ends it)."""
        if spec.ttl is not None:
            return spec.ttl
        return 0.0 if spec.pin else self.ttl


def groups_of(specs: Iterable[ModelSpec]) -> Mapping[str, Group]:
    """The groups ``specs`` name, by name; a name given two settings is an error."""
    out: dict[str, Group] = {}
    for spec in specs:
        group = spec.group
        if group is not None and out.setdefault(group.name, group) != group:
            raise ValueError(f"group {group.name!r} is set two ways: {out[group.name]!r} and "
                             f"{group!r} (model {spec.name!r})")
    return MappingProxyType(out)
