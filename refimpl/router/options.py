"""The router's command line: llama-server's whole command line, and the harness's own flags.

Every llama-server flag is accepted, read from the flag table (``refimpl/flags.py``, generated
from the pinned llama.cpp's ``--help``) with its arity. The router acts on its own
(``--models-*``, ``--host``, ``--port``, ``--api-key``, ...) and hands every other one to each
child unchanged (``-c 1024``, ``--temp 0.5``), except those llama-server's router keeps from its
children (server-models.cpp, ``unset_reserved_args``: keys, TLS, the models flags, the model and
its alias, ``--log-file``). A flag that neither the router nor the reference child acts on is
listed once at start (``no_effect``). ``LLAMA_ARG_*`` variables set the router's own flags as
llama-server's do, the command line winning; the others reach the children with the
environment.

Every number is checked here, at start, the way argparse checks a flag (exit code 2, the flag
named): finite, and in its range. ``LLAMA_API_KEY`` is the key when ``--api-key`` is not given,
as in llama-server; an empty key is refused rather than taken as "no authentication".
``LLAMA_SERVER_DEBUG_FAKE_TIMING`` (any non-empty value) turns on upstream's test hook: a delay
before each load and after a request takes its model (``refimpl/router/debug.py``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from refimpl import flags
from refimpl.child.cli import ACTS_ON as CHILD_ACTS_ON
from refimpl.child.cli import Version
from refimpl.core.config import DEFAULT_POLICY, POLICIES

DEFAULT_CHILD = "{python} -m refimpl.child"
_SIZES = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1024, "m": 1024**2, "mib": 1024**2,
          "mb": 1024**2, "g": 1024**3, "gib": 1024**3, "gb": 1024**3}

# Child flags whose value is a number (by the table's name for them), checked at start (preset
# values too, see sources.py) so that "nan" or "1e999" is refused with the flag's name rather
# than failing every load later. Ranges are the child's to check (llama-server takes -1 for
# several of them).
NUMERIC_CHILD_FLAGS: dict[str, type[int | float]] = {
    "--ctx-size": int, "--n-predict": int, "--batch-size": int, "--ubatch-size": int,
    "--parallel": int, "--threads": int, "--seed": int, "--top-k": int,
    "--temperature": float, "--top-p": float, "--min-p": float, "--repeat-penalty": float,
}
# The llama-server flags the router itself acts on (the table's names; argparse parses them).
ROUTER_FLAGS = frozenset({"--host", "--port", "--models-dir", "--models-preset", "--models-max",
                          "--models-autoload", "--api-key", "--sleep-idle-seconds",
                          "--offline"})
# The flags the router acts on: its own, the key file, and the hub token (for downloads)
ROUTER_ACTS_ON = ROUTER_FLAGS | {"--api-key-file", "--hf-token"}
# What llama-server's router keeps from its children (server-models.cpp: unset_reserved_args,
# and --log-file); --host, --port and --alias each child gets its own.
NOT_FORWARDED = (ROUTER_FLAGS - {"--sleep-idle-seconds"}) | {
    "--api-key-file", "--ssl-key-file", "--ssl-cert-file", "--model", "--mmproj", "--alias",
    "--hf-repo", "--log-file"}
# Accepted by llama-server, refused here: taken silently they would leave a router that its
# user believes encrypted serving plain.
REFUSED = {
    "--ssl-key-file": "the reference router serves plain HTTP; put TLS in front of it",
    "--ssl-cert-file": "the reference router serves plain HTTP; put TLS in front of it",
}
# Flags whose variable takes effect though the flag itself does not: huggingface_hub reads
# HF_TOKEN in the download child, which inherits the router's environment.
ACTS_FROM_ENV = frozenset({"--hf-token"})
FAKE_TIMING_ENV = "LLAMA_SERVER_DEBUG_FAKE_TIMING"
MAX_SECONDS = 7 * 24 * 3600  # a timeout longer than a week is a typo, not a timeout
MAX_BYTES = 1 << 60  # 1 EiB
API_KEY_ENV = "LLAMA_API_KEY"


def number_problem(flag: str, value: str) -> str | None:
    """Why ``value`` is not a value of the child flag ``flag``; None when it is (or ``flag``
    takes no number)."""
    kind = NUMERIC_CHILD_FLAGS.get(flags.key_of(flag))
    if kind is None:
        return None
    try:
        number = kind(value.strip())
    except ValueError:
        return f"{value!r} is not {'a whole number' if kind is int else 'a number'}"
    return None if math.isfinite(number) else f"{value!r} is not a finite number"


def parse_seconds(text: str, never: bool = False) -> float:
    """Seconds, finite, from 0 to MAX_SECONDS; -1 too when ``never`` (it means "never")."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if never and value == -1:
        return value
    if not (math.isfinite(value) and 0 <= value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds from 0 to {MAX_SECONDS}"
            + (" (or -1: never)" if never else ""))
    return value


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None \
                else f"of {minimum} or more"
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {bounds}")
        return value
    return parse


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in _SIZES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512MiB or 8G")
    size = float(m.group(1)) * _SIZES[m.group(2).lower()]  # inf for 400 digits
    if not size <= MAX_BYTES:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is larger than 1 EiB")
    return int(size)


def parse_device(text: str) -> tuple[str, int]:
    """'gpu0=24GiB' -> ('gpu0', 25769803776); the router and the simulator share it."""
    name, sep, size = text.partition("=")
    try:
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError("no DEVICE=")
        return name.strip(), parse_size(size)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not DEVICE=SIZE; write it like gpu0=24GiB or host=64MiB") from None


@dataclass
class RouterOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    models_dir: str | None = None
    models_preset: str | None = None
    models_max: int = 4
    models_memory_margin: int = 1024  # MiB, 0 = off
    device_memory: dict[str, int] = field(default_factory=dict)  # declared capacities
    models_autoload: bool = True
    api_key: str | None = None  # as given (--api-key or LLAMA_API_KEY)
    # every key a client may send: --api-key's comma-separated list and --api-key-file's lines
    api_keys: tuple[str, ...] = ()
    hf_token: str | None = None  # --hf-token or HF_TOKEN: the download child and the hub check
    sleep_idle_seconds: float | None = None
    offline: bool = False
    policy: str = DEFAULT_POLICY
    drain_timeout: float = 30.0
    models_ttl: float = 0.0  # seconds idle before a model is unloaded, 0 = never (ROUTER.md 7)
    queue_max: int = 0  # requests that may wait at once, 0 = unlimited (ROUTER.md 7)
    child_cmd: str = DEFAULT_CHILD
    download_cmd: str = DEFAULT_CHILD
    stop_timeout: float = 10.0
    child_args: list[str] = field(default_factory=list)
    # HTTP limits (refimpl/router/http.py): as a production server sets them
    limit_concurrency: int = 1000
    timeout_keep_alive: float = 5.0
    timeout_header: float = 30.0
    max_header_size: int = 64 * 1024
    trace: str | None = None  # where the core's trace goes when the router stops
    # llama-server flags given (argv or environment) that neither this router nor the
    # reference child acts on: accepted, listed once at start
    no_effect: list[str] = field(default_factory=list)
    debug_fake_timing: bool = False  # LLAMA_SERVER_DEBUG_FAKE_TIMING
    swap_notices: bool = False  # ROUTER.md 7: a streamed chat that waits sees the load's progress


def build_parser(prog: str = "refimpl-router") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,  # '--device X' must not be --device-memory
        description="Reference router for llama-server router mode: one child process per "
                    "model, requests routed by their \"model\", models loaded on demand and "
                    "evicted under --models-max and a per-device memory budget. Every other "
                    "llama-server flag (-c, --temp, --seed, ...) is accepted and handed to "
                    "every child, as llama-server's router does.")
    p.add_argument("--version", action=Version)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    p.add_argument("--port", type=whole_number(1, 65535), default=8080,
                   help="port to listen on (%(default)s)")
    p.add_argument("--models-dir", help="folder of *.gguf models (sub-folders: multimodal or "
                                        "sharded models)")
    p.add_argument("--models-preset", help="INI file: [*] for all models, one section per model")
    p.add_argument("--models-max", type=whole_number(0), default=4,
                   help="children running at once, 0 = unlimited (%(default)s)")
    p.add_argument("--models-memory-margin", type=whole_number(0), default=1024, metavar="MiB",
                   help="MiB to leave free on each device, 0 = no memory budget (%(default)s)")
    p.add_argument("--device-memory", type=parse_device, action="append", default=[],
                   metavar="DEVICE=SIZE",
                   help="declare the bytes models may use on a device instead of measuring free "
                        "memory (repeatable), e.g. host=48MiB; lets tests drive memory eviction "
                        "with tiny models")
    auto = p.add_mutually_exclusive_group()
    auto.add_argument("--models-autoload", dest="models_autoload", action="store_true",
                      default=True, help="load a model on its first request (default)")
    auto.add_argument("--no-models-autoload", dest="models_autoload", action="store_false",
                      help="answer 400 for a model that is not loaded")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (all but /health); "
                                      f"default: ${API_KEY_ENV} if set")
    p.add_argument("--sleep-idle-seconds", type=lambda text: parse_seconds(text, never=True),
                   default=None, metavar="SECONDS",
                   help="children free their weights after this many idle seconds (-1: never)")
    p.add_argument("--offline", action="store_true",
                   help="never download: POST /models is refused (cached models still load)")
    p.add_argument("--trace", metavar="FILE",
                   help="record every event the core is given and every command it returns "
                        "in FILE, as they happen (pickled batches of refimpl.core.trace.At: "
                        "read with refimpl.router.tracefile.read_trace) for the invariants of "
                        "properties/invariants.py")
    p.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                   help="scheduling policy (%(default)s)")
    p.add_argument("--drain-timeout", type=parse_seconds, default=30.0, metavar="SECONDS",
                   help="policy drain-timeout only: seconds the queue may wait for busy models "
                        "to drain before the least recently used one is evicted busy "
                        "(%(default)s)")
    p.add_argument("--models-ttl", type=parse_seconds, default=0.0, metavar="SECONDS",
                   help="unload a model that has had no request in flight or waiting for this "
                        "long, 0 = never (%(default)s); preset key ttl sets it per model, and "
                        "a model pinned with pin = true keeps only its own")
    p.add_argument("--queue-max", type=whole_number(0), default=0, metavar="N",
                   help="requests that may wait (for a load, a slot or a model's concurrency) "
                        "at once; one more is answered 429 with Retry-After, 0 = unlimited "
                        "(%(default)s)")
    p.add_argument("--stop-timeout", type=parse_seconds, default=10.0, metavar="SECONDS",
                   help="seconds a child gets to exit before it is killed (%(default)s)")
    p.add_argument("--child-cmd", default=DEFAULT_CHILD,
                   help="command that starts a child; $model, $port, $host, $alias are filled "
                        "in, other flags appended; e.g. 'llama-server -m $model --port $port "
                        "--host $host' (default: our llama-cpp-python child)")
    p.add_argument("--swap-notices", action="store_true",
                   help="a streamed chat that waits for its model to load gets the load's "
                        "progress as delta.reasoning_content chunks before the answer")
    p.add_argument("--download-cmd", default=DEFAULT_CHILD,
                   help="command that starts a download child (POST /models); it gets "
                        "LLAMA_SERVER_CHILD_MODE=download and LLAMA_ARG_HF_REPO=user/repo:TAG "
                        "in its environment and downloads from $HF_ENDPOINT into the cache "
                        "($LLAMA_CACHE, else the Hugging Face hub cache), e.g. 'llama-server' "
                        "(default: our child)")
    http = p.add_argument_group("HTTP limits")
    http.add_argument("--limit-concurrency", type=whole_number(1), default=1000, metavar="N",
                      help="open connections or running requests past which a request gets "
                           "503 (%(default)s)")
    http.add_argument("--timeout-keep-alive", type=_positive_seconds, default=5.0,
                      metavar="SECONDS",
                      help="an idle kept-alive connection is closed after this (%(default)s)")
    http.add_argument("--timeout-header", type=_positive_seconds, default=30.0,
                      metavar="SECONDS",
                      help="a request's line and headers must arrive within this; 408 if not "
                           "(%(default)s)")
    http.add_argument("--max-header-size", type=_header_size, default=64 * 1024, metavar="SIZE",
                      help="longest request line and headers; 431 past it (64KiB)")
    return p


def _header_size(text: str) -> int:
    size = parse_size(text)
    if size < 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is less than 1KiB: no request would fit")
    return size


def _positive_seconds(text: str) -> float:
    value = parse_seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def parse(argv: list[str], env: Mapping[str, str] | None = None,
          prog: str = "refimpl-router") -> RouterOptions:
    """The options of ``argv`` and of ``env`` (default: os.environ), the command line winning;
    a bad value exits 2 with argparse's message (``prog``: the name it is run by)."""
    parser = build_parser(prog)
    env = os.environ if env is None else env
    try:
        own, given = _split(argv, parser)
        from_env = flags.from_env(env)
    except flags.FlagError as exc:
        parser.error(str(exc))
    on_cli = {g.flag.key for g in given} | {flags.key_of(w.partition("=")[0]) for w in own
                                            if w.startswith("-")}
    # the router's own flags from LLAMA_ARG_*, before the command line so that it wins
    defaults = [w for g in from_env if g.flag.key in ROUTER_FLAGS - {"--api-key"}
                and g.flag.key not in on_cli for w in _words(g)]
    known = parser.parse_args(defaults + own)
    for g in given:
        if g.flag.key in REFUSED:
            parser.error(f"{g.words[0]}: {REFUSED[g.flag.key]}")
        for value in g.values:
            problem = number_problem(g.flag.key, value)
            if problem is not None:
                parser.error(f"argument {g.words[0].partition('=')[0]}: {problem}")
    child_args = [w for g in given if g.flag.key not in NOT_FORWARDED for w in g.words]
    if known.sleep_idle_seconds is not None:  # the router takes it, and so does every child
        child_args += ["--sleep-idle-seconds", f"{known.sleep_idle_seconds:g}"]
    acted = ROUTER_ACTS_ON | CHILD_ACTS_ON
    no_effect = [*(g.words[0] for g in given if g.flag.key not in acted),
                 *(str(g.flag.env) for g in from_env if g.flag.key not in acted | ACTS_FROM_ENV)]
    if known.api_key is None and API_KEY_ENV in env:
        known.api_key, where = env[API_KEY_ENV], API_KEY_ENV
    else:
        where = "--api-key"
    if known.api_key is not None and not known.api_key.strip():
        parser.error(f"{where} is empty: give a key, or " + (
            "leave --api-key out" if where == "--api-key" else f"unset {where}")
            + " to run without authentication")
    if known.api_key is not None and any(ord(c) < 32 or ord(c) == 127 for c in known.api_key):
        parser.error(f"{where} has a control character: no client could send that key")
    # As llama-server: a comma-separated list (CSV: a key may be quoted), and --api-key-file's
    # lines that are not empty and do not start with '#'.
    keys = [k for k in next(csv.reader([known.api_key]), []) if k] \
        if known.api_key is not None else []
    for g in [*given, *from_env]:
        if g.flag.key == "--api-key-file":
            try:
                lines = Path(g.values[0]).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                parser.error(f"--api-key-file {g.values[0]}: cannot read it: "
                             f"{getattr(exc, 'strerror', None) or exc}")
            keys += [line for line in lines if line and not line.startswith("#")]
            if not keys:
                parser.error(f"--api-key-file {g.values[0]} holds no key")
    if any(ord(c) < 32 or ord(c) == 127 for k in keys for c in k):
        parser.error("an API key has a control character: no client could send that key")
    token = next((g.values[0] for g in [*given, *from_env] if g.flag.key == "--hf-token"),
                 None)
    return RouterOptions(
        host=known.host, port=known.port, models_dir=known.models_dir,
        models_preset=known.models_preset, models_max=known.models_max,
        models_memory_margin=known.models_memory_margin,
        device_memory=dict(known.device_memory), models_autoload=known.models_autoload,
        api_key=known.api_key, api_keys=tuple(dict.fromkeys(keys)), hf_token=token,
        sleep_idle_seconds=known.sleep_idle_seconds,
        offline=known.offline, policy=known.policy, drain_timeout=known.drain_timeout,
        models_ttl=known.models_ttl,
        queue_max=known.queue_max, child_cmd=known.child_cmd,
        download_cmd=known.download_cmd,
        stop_timeout=known.stop_timeout, child_args=child_args,
        limit_concurrency=known.limit_concurrency, timeout_keep_alive=known.timeout_keep_alive,
        timeout_header=known.timeout_header, max_header_size=known.max_header_size,
        trace=known.trace, no_effect=list(dict.fromkeys(no_effect)),
        debug_fake_timing=bool(env.get(FAKE_TIMING_ENV)), swap_notices=known.swap_notices)


def _words(given: flags.Given) -> list[str]:
    """A flag from the environment as command-line words."""
    name = given.flag.names[-1] if given.positive else given.flag.negative[-1]
    return [name, *given.values]


def _split(argv: list[str], parser: argparse.ArgumentParser
           ) -> tuple[list[str], list[flags.Given]]:
    """The words argparse parses (the router's own flags, the harness's), and the other
    llama-server flags, each with its values as the table says."""
    own: list[str] = []
    given: list[flags.Given] = []
    actions = parser._option_string_actions
    i = 0
    while i < len(argv):
        word = flags.normalize(argv[i])
        name, eq, _ = word.partition("=")
        action = actions.get(name if name.startswith("--") else word)
        if action is None:
            one, i = flags.take(argv, i)
            given.append(one)
            continue
        takes = 0 if action.nargs == 0 or eq else 1
        own += [word, *argv[i + 1:i + 1 + takes]]
        i += 1 + takes
    return own, given
