"""The router's command line: llama-server's router flags, and every other flag for the children.

The router consumes its own flags (``--models-*``, ``--host``, ``--port``, ``--api-key``, ...);
every flag it does not know is handed to each child unchanged (``-c 1024``, ``--temp 0.5``), as
llama-server does, so llama.cpp's own router tests can start this router in its place.

Every number is checked here, at start, the way argparse checks a flag (exit code 2, the flag
named): finite, and in its range. ``LLAMA_API_KEY`` is the key when ``--api-key`` is not given,
as in llama-server; an empty key is refused rather than taken as "no authentication".
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

from refimpl.core.config import DEFAULT_POLICY, POLICIES

DEFAULT_CHILD = "{python} -m refimpl.child"
_SIZES = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1024, "m": 1024**2, "mib": 1024**2,
          "mb": 1024**2, "g": 1024**3, "gib": 1024**3, "gb": 1024**3}

# Flags that take a value, which the router hands to children; needed so that a value such as
# "-1" is not mistaken for a flag. Anything else unknown is passed through as it comes.
CHILD_VALUE_FLAGS = {
    "-c", "--ctx-size", "--temp", "--seed", "-s", "-n", "--n-predict", "-b", "--batch-size",
    "-ub", "--ubatch-size", "-np", "--parallel", "-t", "--threads", "-ngl", "--n-gpu-layers",
    "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--chat-template", "-a", "--alias",
}
# Child flags whose value is a number, checked at start (preset values too, see sources.py) so
# that "nan" or "1e999" is refused with the flag's name rather than failing every load later.
# Ranges are the child's to check (llama-server takes -1 for several of them).
NUMERIC_CHILD_FLAGS: dict[str, type[int | float]] = {
    "-c": int, "--ctx-size": int, "-n": int, "--n-predict": int, "-b": int, "--batch-size": int,
    "-ub": int, "--ubatch-size": int, "-np": int, "--parallel": int, "-t": int, "--threads": int,
    "-s": int, "--seed": int, "--top-k": int,
    "--temp": float, "--top-p": float, "--min-p": float, "--repeat-penalty": float,
}
MAX_SECONDS = 7 * 24 * 3600  # a timeout longer than a week is a typo, not a timeout
MAX_BYTES = 1 << 60  # 1 EiB
API_KEY_ENV = "LLAMA_API_KEY"


def number_problem(flag: str, value: str) -> str | None:
    """Why ``value`` is not a value of the child flag ``flag``; None when it is (or ``flag``
    takes no number)."""
    kind = NUMERIC_CHILD_FLAGS.get(flag)
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


def _whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
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
    api_key: str | None = None
    sleep_idle_seconds: float | None = None
    offline: bool = False
    policy: str = DEFAULT_POLICY
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refimpl-router",
        description="Reference router for llama-server router mode: one child process per "
                    "model, requests routed by their \"model\", models loaded on demand and "
                    "evicted under --models-max and a per-device memory budget. Flags it does "
                    "not know (-c, --temp, --seed, ...) are handed to every child.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    p.add_argument("--port", type=_whole(1, 65535), default=8080,
                   help="port to listen on (%(default)s)")
    p.add_argument("--models-dir", help="folder of *.gguf models (sub-folders: multimodal or "
                                        "sharded models)")
    p.add_argument("--models-preset", help="INI file: [*] for all models, one section per model")
    p.add_argument("--models-max", type=_whole(0), default=4,
                   help="children running at once, 0 = unlimited (%(default)s)")
    p.add_argument("--models-memory-margin", type=_whole(0), default=1024, metavar="MiB",
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
                   help="record every event the core is given and every command it returns; "
                        "when the router stops, write them to FILE (a pickled list of "
                        "refimpl.core.trace.At) for the invariants of properties/invariants.py")
    p.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                   help="scheduling policy (%(default)s)")
    p.add_argument("--stop-timeout", type=parse_seconds, default=10.0, metavar="SECONDS",
                   help="seconds a child gets to exit before it is killed (%(default)s)")
    p.add_argument("--child-cmd", default=DEFAULT_CHILD,
                   help="command that starts a child; $model, $port, $host, $alias are filled "
                        "in, other flags appended; e.g. 'llama-server -m $model --port $port "
                        "--host $host' (default: our llama-cpp-python child)")
    p.add_argument("--download-cmd", default=DEFAULT_CHILD,
                   help="command that starts a download child (POST /models); it gets "
                        "LLAMA_SERVER_CHILD_MODE=download and LLAMA_ARG_HF_REPO=user/repo:TAG "
                        "in its environment and downloads from $HF_ENDPOINT into the cache "
                        "($LLAMA_CACHE, else the Hugging Face hub cache), e.g. 'llama-server' "
                        "(default: our child)")
    http = p.add_argument_group("HTTP limits")
    http.add_argument("--limit-concurrency", type=_whole(1), default=1000, metavar="N",
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


def parse(argv: list[str], env: Mapping[str, str] | None = None) -> RouterOptions:
    """The options of ``argv``, the API key from ``env`` (default: os.environ) when no flag
    gives one; a bad value exits 2 with argparse's message."""
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    child_args = _child_args(rest, parser)
    if known.sleep_idle_seconds is not None:  # the router takes it, and so does every child
        child_args += ["--sleep-idle-seconds", f"{known.sleep_idle_seconds:g}"]
    env = os.environ if env is None else env
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
    return RouterOptions(
        host=known.host, port=known.port, models_dir=known.models_dir,
        models_preset=known.models_preset, models_max=known.models_max,
        models_memory_margin=known.models_memory_margin,
        device_memory=dict(known.device_memory), models_autoload=known.models_autoload,
        api_key=known.api_key, sleep_idle_seconds=known.sleep_idle_seconds,
        offline=known.offline, policy=known.policy, child_cmd=known.child_cmd,
        download_cmd=known.download_cmd,
        stop_timeout=known.stop_timeout, child_args=child_args,
        limit_concurrency=known.limit_concurrency, timeout_keep_alive=known.timeout_keep_alive,
        timeout_header=known.timeout_header, max_header_size=known.max_header_size,
        trace=known.trace)


def _child_args(rest: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Check the flags meant for children: each must look like a flag or follow one."""
    out: list[str] = []
    expecting_value = False
    flag = ""
    for arg in rest:
        if expecting_value:
            out.append(arg)
            expecting_value = False
            problem = number_problem(flag, arg)
            if problem is not None:
                parser.error(f"argument {flag}: {problem}")
        elif arg.startswith("-"):
            flag, eq, value = arg.partition("=")
            out.append(arg)
            expecting_value = flag in CHILD_VALUE_FLAGS and not eq
            problem = number_problem(flag, value) if eq else None
            if problem is not None:
                parser.error(f"argument {flag}: {problem}")
        elif out:
            out.append(arg)  # the value of a child flag we do not know
        else:
            parser.error(f"unexpected argument {arg!r}")
    return out
