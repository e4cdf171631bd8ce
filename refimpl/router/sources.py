"""Where models come from: the cache (``user/repo:TAG`` names, see ``refimpl.cache``), a
``--models-dir`` folder and a ``--models-preset`` INI file; a later source overrides an earlier
one for the same name.

Each source yields :class:`ModelEntry` values: a name, the file to load, and the child flags for it.
Flags merge with the precedence of ROUTER.md section 5: router command line > the model's preset
section > the preset's ``[*]`` section. A preset key is any name of a llama-server flag without
its dashes (``ctx-size``, ``c``, ``hf``) or its variable (``LLAMA_ARG_HF_REPO``), as llama-server's
preset parser takes it (common/preset.cpp). A section may name its model by ``hf-repo``
(``user/repo[:TAG]``, and ``hf-file``): it is the cached file, found here in the hub cache, or,
when the cache does not hold it, the repo is handed to the child, which fetches it as it loads;
and with ``dedup-cache-models`` the cache entry of that same file is hidden from ``GET /models``
(still routed), as upstream does (server-models.cpp, ``load_models``).
A ``[group:NAME]`` section is no model: it sets its group's ``swap`` and ``persistent``
(ROUTER.md 7); a model section joins it with ``group = NAME``.

What the sources say is checked here, before a core is built from it, so that start-up and
``GET /models?reload=1`` refuse it alike with one line naming the file, section and key
(:class:`SourceError`): a name or alias of two models, a preset number that is not finite or out
of its range.
"""

from __future__ import annotations

import configparser
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from refimpl import flags
from refimpl.cache import PREFERRED_TAGS, BadName, CachedModel, list_cached, split_name
from refimpl.core.config import Card, Group

from .options import MAX_SECONDS, number_problem

SHARD = re.compile(r"^(?P<base>.+)-(?P<n>\d{5})-of-(?P<total>\d{5})\.gguf$")
PRESET_ONLY = {"load-on-startup", "stop-timeout", "dedup-cache-models",
               "child-cmd", "health", "load-timeout",  # these three and the rest: ROUTER.md 7
               "ttl", "pin", "concurrency", "group"}
GROUP_SECTION = "group:"  # ``[group:NAME]``: a group's settings (ROUTER.md 7), not a model
GROUP_KEYS = ("swap", "persistent")
ROUTER_ONLY = {"--api-key", "--ssl-key-file", "--ssl-cert-file", "--models-dir",
               "--models-preset", "--models-max", "--models-memory-margin", "--models-autoload",
               "--no-models-autoload", "--host", "--port", "--alias", "-a"}
# Resolved here to the cached file (the child gets ``-m FILE``), so not handed on, unless the
# cache does not hold it (``ModelEntry.fetch``).
HF_FLAGS = {"--hf-repo", "--hf-file"}
# Preset-only keys under the names upstream also reads them by (common/arg.h).
_PRESET_ENV = {"__PRESET_LOAD_ON_STARTUP": "load-on-startup",
               "__PRESET_STOP_TIMEOUT": "stop-timeout",
               "__PRESET_DEDUP_CACHE_MODELS": "dedup-cache-models"}
_BY_ENV = {f.env: f for f in flags.FLAGS if f.env}


class SourceError(ValueError):
    """A models folder or preset file that cannot be read; the message says what and where."""


@dataclass
class ModelEntry:
    name: str
    path: Path | None
    source: str  # "models_dir" | "preset" | "cache"
    mmproj: Path | None = None
    flags: dict[str, str | None] = field(default_factory=dict)  # flag -> value (None: a switch)
    aliases: tuple[str, ...] = ()
    stop_timeout: float | None = None
    load_on_startup: bool = False
    aliases_from: str = ""  # where the aliases were read: file, section and key, for errors
    tags: tuple[str, ...] = ()  # --tags, sorted: informational, never routed by
    dedup_cache: bool | None = None  # preset dedup-cache-models (None: not said)
    hidden: bool = False  # a cache entry a preset deduplicates: routed, not listed
    # GET /models "architecture" as the files say (refimpl.modalities); None: not read yet
    architecture: dict[str, list[str]] | None = None
    # a preset's hf-repo the cache does not hold: no file, its child fetches it as it loads
    fetch: bool = False
    # a backend of its own (ROUTER.md 7): its command, its health path, its load timeout
    child_cmd: str | None = None
    health: str | None = None
    load_timeout: float | None = None
    # the router's policies for it (ROUTER.md 7): idle TTL (None: --models-ttl), pin, the
    # requests in flight it takes at once (0: no limit)
    ttl: float | None = None
    pin: bool = False
    concurrency: int = 0
    group: Group | None = None  # preset ``group = NAME`` with its ``[group:NAME]`` settings

    def args(self) -> list[str]:
        out: list[str] = []
        for flag, value in self.flags.items():
            out.append(flag)
            if value is not None:
                out.append(value)
        return out


def card_of(entry: ModelEntry) -> Card:
    """What the core carries of a source's entry: what its child is started with, and what
    ``GET /models`` shows of it."""
    return Card(entry.source, None if entry.path is None else str(entry.path),
                None if entry.mmproj is None else str(entry.mmproj), tuple(entry.args()),
                entry.tags, entry.hidden,
                None if entry.architecture is None else
                {k: tuple(v) for k, v in entry.architecture.items()},
                entry.child_cmd, entry.health, entry.load_timeout)


def launch_of(entry: ModelEntry) -> tuple[str, ...]:
    """What is started for the entry: a running child started otherwise is stale."""
    own = [f"{k}={v}" for k, v in (("child-cmd", entry.child_cmd), ("health", entry.health))
           if v is not None]
    return (str(entry.path), str(entry.mmproj), *entry.args(), *own)


def flags_from_args(args: list[str]) -> dict[str, str | None]:
    """['-c', '1024', '--jinja', '--temp=0.5'] -> {'-c': '1024', '--jinja': None, '--temp': '0.5'}"""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if "=" in arg and arg.startswith("--"):
            flag, value = arg.split("=", 1)
            out[_canonical(flag)] = value
        elif i + 1 < len(args) and not _is_flag(args[i + 1]):
            out[_canonical(arg)] = args[i + 1]
            i += 1
        else:
            out[_canonical(arg)] = None
        i += 1
    return out


def _is_flag(text: str) -> bool:
    return text.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", text)


def _canonical(flag: str) -> str:
    """The flag table's one name for a flag word ('-c' -> '--ctx-size'); a negation stays one
    ('--no-mmap'), and a word the table does not know stays as written."""
    found = flags.lookup(flag)
    if found is None:
        return flag
    return found[0].key if found[1] else flags.normalize(flag)


def _key_to_flag(key: str) -> str:
    """A preset key -> the flag: any of a flag's names without dashes (``ctx-size``, ``c``,
    ``hf``, ``hff``), with them, or its variable (``LLAMA_ARG_HF_REPO``)."""
    by_env = _BY_ENV.get(key) or _BY_ENV.get(key.upper())
    if by_env is not None:
        return by_env.key
    if key.startswith("-"):
        return _canonical(key)
    for word in ("--" + key, "-" + key):
        if flags.lookup(word) is not None:
            return _canonical(word)
    if key.upper().startswith("LLAMA_ARG_"):  # a variable of no flag in the pinned table
        return "--" + key[len("LLAMA_ARG_"):].lower().replace("_", "-")
    return "--" + key


def scan_models_dir(folder: Path) -> list[ModelEntry]:
    if not folder.is_dir():
        raise SourceError(f"--models-dir {folder}: not a folder")
    try:
        return _scan_models_dir(folder)
    except OSError as exc:
        raise SourceError(f"--models-dir {folder}: {exc}") from None


def _scan_models_dir(folder: Path) -> list[ModelEntry]:
    out: list[ModelEntry] = []
    for item in sorted(folder.iterdir()):
        if item.is_file() and item.suffix == ".gguf" and not item.name.startswith("mmproj"):
            shard = SHARD.match(item.name)
            if shard is None:
                out.append(ModelEntry(item.stem, item, "models_dir"))
            elif int(shard["n"]) == 1:
                out.append(ModelEntry(shard["base"], item, "models_dir"))
        elif item.is_dir():
            entry = _folder_model(item)
            if entry is not None:
                out.append(entry)
    return out


def _folder_model(folder: Path) -> ModelEntry | None:
    """A sub-folder holds one model: its shards, or a model with ``mmproj*.gguf`` beside it."""
    ggufs = sorted(p for p in folder.iterdir() if p.suffix == ".gguf" and p.is_file())
    mmproj = next((p for p in ggufs if p.name.startswith("mmproj")), None)
    rest = [p for p in ggufs if not p.name.startswith("mmproj")]
    firsts = [p for p in rest if (m := SHARD.match(p.name)) and int(m["n"]) == 1]
    if firsts:
        return ModelEntry(folder.name, firsts[0], "models_dir", mmproj=mmproj)
    if len(rest) == 1:
        return ModelEntry(folder.name, rest[0], "models_dir", mmproj=mmproj)
    return None


def read_preset(path: Path) -> tuple[dict[str, str | None], list[ModelEntry]]:
    """The ``[*]`` flags and one entry per model section of an INI preset file."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        raise SourceError(f"--models-preset {path}: no such file") from None
    except (configparser.Error, UnicodeDecodeError, OSError) as exc:
        # configparser's messages take several lines: one line here, like every other error
        raise SourceError(f"--models-preset {path}: {_one_line(str(exc))}") from None
    common: dict[str, str | None] = {}
    entries: list[ModelEntry] = []
    common_dedup: bool | None = None
    groups: dict[str, Group] = {}  # [group:NAME] sections
    members: dict[str, str] = {}  # model section -> the group it names
    for section in parser.sections():
        items = {_PRESET_ENV.get(k, k): v for k, v in parser.items(section)}
        where = f"--models-preset {path}: [{section}]"
        if section.startswith(GROUP_SECTION):
            name = section[len(GROUP_SECTION):].strip()
            if not name:
                raise SourceError(f"{where}: a group section needs a name ([group:NAME])")
            for key in items:
                if key not in GROUP_KEYS:
                    raise SourceError(f"{where} {key}: a group section takes only "
                                      f"{', '.join(GROUP_KEYS)}")
            groups[name] = Group(name, *(_truthy(items[k], f"{where} {k}") if k in items
                                         else False for k in GROUP_KEYS))
            continue
        if section == "*":
            common = {_key_to_flag(k): _checked_value(where, k, v) for k, v in items.items()
                      if k not in PRESET_ONLY}
            if "dedup-cache-models" in items:
                common_dedup = _truthy(items["dedup-cache-models"],
                                       f"{where} dedup-cache-models")
            continue
        entry = ModelEntry(section, None, "preset")
        for key, value in items.items():
            flag = _key_to_flag(key) if key not in PRESET_ONLY else key
            if flag == "--model":
                entry.path = (path.parent / value).resolve() if not Path(value).is_absolute() \
                    else Path(value)
            elif key == "load-on-startup":
                entry.load_on_startup = _truthy(value, f"{where} {key}")
            elif key == "stop-timeout":
                entry.stop_timeout = _seconds(value, f"{where} {key}")
            elif key == "dedup-cache-models":
                entry.dedup_cache = _truthy(value, f"{where} {key}")
            elif key == "child-cmd":
                if not (value or "").strip():
                    raise SourceError(f"{where} child-cmd: empty")
                entry.child_cmd = value
            elif key == "health":
                if not (value or "").startswith("/") or any(c in value for c in " \r\n"):
                    raise SourceError(f"{where} health = {value!r}: a path such as /health")
                entry.health = value
            elif key == "load-timeout":
                entry.load_timeout = _seconds(value, f"{where} {key}")
            elif key == "ttl":
                entry.ttl = _seconds(value, f"{where} {key}")
            elif key == "pin":
                entry.pin = _truthy(value, f"{where} {key}")
            elif key == "concurrency":
                entry.concurrency = _count(value, f"{where} {key}")
            elif key == "group":
                if not (value or "").strip():
                    raise SourceError(f"{where} group: empty")
                members[section] = value.strip()
            elif flag == "--alias" or key == "aliases":
                named = [a.strip() for a in value.split(",") if a.strip()]
                # its own name, or twice, is no second model: said once
                entry.aliases = tuple(dict.fromkeys(
                    a for a in (*entry.aliases, *named) if a != section))
                entry.aliases_from = f"{where} {key}"
            elif flag == "--mmproj":
                entry.mmproj = Path(value)
            elif key not in PRESET_ONLY:
                flag_value = _checked_value(where, key, value)
                if flag_value != "\x00off":
                    entry.flags[_key_to_flag(key)] = flag_value
        entries.append(entry)
    for entry in entries:  # [*] says it for every section that does not
        if entry.dedup_cache is None:
            entry.dedup_cache = common_dedup
        if entry.name in members:  # a group with no section of its own: neither swap nor kept
            name = members[entry.name]
            entry.group = groups.get(name, Group(name))
    return common, entries


def _count(value: str | None, where: str) -> int:
    try:
        count = int(value or "")
    except ValueError:
        count = -1
    if count < 0:
        raise SourceError(f"{where} = {value!r}: a whole number, 0 or more (0: no limit)")
    return count


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _seconds(value: str, where: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS):
        raise SourceError(f"{where} = {value!r} is not a number of seconds from 0 to "
                          f"{MAX_SECONDS}")
    return seconds


def _checked_value(where: str, key: str, value: str) -> str | None:
    """The child flag value of a preset key, refused if the flag takes a number and this is
    none (or not a finite one)."""
    flag_value = _flag_value(value)
    if flag_value is not None and flag_value != "\x00off":
        problem = number_problem(_key_to_flag(key), flag_value)
        if problem is not None:
            raise SourceError(f"{where} {key}: {problem}")
    return flag_value


def _flag_value(value: str) -> str | None:
    lowered = value.strip().lower()
    if lowered in ("true", "on", "yes", ""):
        return None  # a switch
    if lowered in ("false", "off", "no"):
        return "\x00off"
    return value.strip()


def _truthy(value: str, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise SourceError(f"{where} = {value!r} is not true or false")


def scan_cache(root: Path) -> list[ModelEntry]:
    return [ModelEntry(m.name, m.path, "cache", mmproj=m.mmproj) for m in list_cached(root)]


def load_sources(models_dir: str | None, models_preset: str | None,
                 router_args: list[str], cache: Path | None = None) -> list[ModelEntry]:
    """Every model, with its child flags merged: router command line > section > ``[*]``."""
    entries: dict[str, ModelEntry] = {}
    cached = list_cached(cache) if cache is not None else []
    for model in cached:
        entries[model.name] = ModelEntry(model.name, model.path, "cache", mmproj=model.mmproj)
    if models_dir:
        for entry in scan_models_dir(Path(models_dir)):
            entries[entry.name] = entry
    common: dict[str, str | None] = {}
    deduplicated: set[Path] = set()
    if models_preset:
        common, preset_entries = read_preset(Path(models_preset))
        for entry in preset_entries:
            where = f"--models-preset {models_preset}: [{entry.name}]"
            base = entries.get(entry.name)
            if base is not None:  # a section may configure a models-dir model
                entry.path = entry.path or base.path
                entry.mmproj = entry.mmproj or base.mmproj
                entry.source = base.source if entry.path == base.path else "preset"
            hf = _hf_model(entry, common, "--hf-repo", "--hf-file", cached, where)
            if entry.path is None and hf is not None:
                entry.path, entry.mmproj = hf.path, entry.mmproj or hf.mmproj
            elif entry.path is None and _hf_repo(entry, common, "--hf-repo") is not None:
                # Not in the cache: listed all the same, and its child is handed the repo and
                # fetches it as it loads (status loading), as llama-server's router and child do
                # (server-models.cpp load_models, update_caps; common/arg.cpp).
                entry.fetch = True
            if entry.path is None and not entry.fetch:
                raise SourceError(f"{where} names no model file (add 'model = "
                                  "path/to/file.gguf' or 'hf-repo = user/repo:TAG')")
            if entry.dedup_cache:
                draft = _hf_model(entry, common, "--hf-repo-draft", None, cached, where)
                deduplicated |= {m.path for m in (hf, draft) if m is not None}
            entries[entry.name] = entry
    for entry in entries.values():
        entry.hidden = entry.source == "cache" and entry.path in deduplicated
    _check_names(entries)
    router_flags = flags_from_args(router_args)
    for entry in entries.values():
        merged = {k: v for k, v in common.items() if v != "\x00off"}
        merged.update(entry.flags)
        merged.update(router_flags)
        entry.tags = tuple(sorted({t.strip() for t in (merged.get("--tags") or "").split(",")
                                   if t.strip()}))
        entry.flags = {k: v for k, v in merged.items()
                       if k not in ROUTER_ONLY and (entry.fetch or k not in HF_FLAGS)
                       and k != "--model" and v != "\x00off"}
    return list(entries.values())


def _hf_repo(entry: ModelEntry, common: dict[str, str | None], flag: str) -> str | None:
    """What a section (over ``[*]``) gives for ``flag``; None when nothing."""
    value = entry.flags.get(flag, common.get(flag))
    return None if not value or value == "\x00off" else value


def _hf_model(entry: ModelEntry, common: dict[str, str | None], repo_flag: str,
              file_flag: str | None, cached: list[CachedModel], where: str
              ) -> CachedModel | None:
    """The cached model a section's ``hf-repo`` (or draft repo) names, its section over
    ``[*]``; None when it names none, or one the cache does not hold. A name that is no hub
    name is refused."""
    repo = _hf_repo(entry, common, repo_flag)
    if repo is None:
        return None
    hf_file = _hf_repo(entry, common, file_flag) if file_flag else None
    try:
        name, tag = split_name(repo)
    except BadName as exc:
        raise SourceError(f"{where} {repo_flag[2:]}: {exc}") from None
    mine = [m for m in cached if m.name.partition(":")[0].lower() == name.lower()]
    if hf_file:
        found = [m for m in mine if any(f.as_posix().endswith("/" + hf_file.lstrip("/"))
                                        for f in m.files)]
    elif tag is not None:
        found = [m for m in mine if m.name.partition(":")[2] == tag]
    else:  # no tag: llama.cpp's default quant first, as the download child picks
        rank = {t: i for i, t in enumerate(PREFERRED_TAGS)}
        found = sorted(mine, key=lambda m: (rank.get(m.name.partition(":")[2], len(rank)),
                                            m.name))
    return found[0] if found else None


def _check_names(entries: dict[str, ModelEntry]) -> None:
    """Every name and alias belongs to one model: the core refuses a catalog that says
    otherwise, so it is refused here first, with the file, section and key that said it."""
    owners = {name: name for name in entries}
    for entry in entries.values():
        for alias in entry.aliases:
            owner = owners.setdefault(alias, entry.name)
            if owner != entry.name:
                what = f"the name of model {owner!r} (source {entries[owner].source})" \
                    if alias == owner else f"an alias of model {owner!r}"
                raise SourceError(f"{entry.aliases_from or entry.name}: alias {alias!r} is "
                                  f"already {what}")
