"""The child's command line: llama-server's, parsed without importing anything heavy.

Every llama-server flag is accepted with its arity, from the flag table (``refimpl/flags.py``);
the child acts on those in ``ACTS_ON`` (also from their ``LLAMA_ARG_*`` variables, the command
line winning) and lists the others once at start as accepted, with no effect here.

Parsing runs before llama_cpp, numpy or FastAPI are imported, so a bad flag costs milliseconds and
exits with status 2 and a one-line message naming the flag (argparse's own behaviour), never a
traceback. Flags a router strips from its children (``--api-key``) are refused loudly rather than
ignored: a child that silently dropped an API key would serve unauthenticated while its caller
believed otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from refimpl import flags

ROUTER_PORT_ENV = "LLAMA_SERVER_ROUTER_PORT"
API_KEY_ENV = "LLAMA_API_KEY"

# Flags a router must not hand to a child. Each maps to the reason shown when one shows up anyway.
_REFUSED = {
    "--api-key": "a command line is world-readable; the router passes the child's key in "
                 "LLAMA_API_KEY",
    "--api-key-file": "the router passes the child's key in LLAMA_API_KEY",
    "--ssl-key-file": "children serve plain HTTP on 127.0.0.1; TLS belongs to the router",
    "--ssl-cert-file": "children serve plain HTTP on 127.0.0.1; TLS belongs to the router",
}


# The llama-server flags this child acts on (the table's names for them).
ACTS_ON = frozenset({"--model", "--host", "--port", "--alias", "--ctx-size", "--temperature",
                     "--seed", "--n-predict", "--batch-size", "--parallel", "--threads",
                     "--n-gpu-layers", "--mmproj", "--sleep-idle-seconds", "--log-verbose",
                     "--embeddings", "--pooling", "--metrics", "--slots", "--hf-repo",
                     "--hf-file"})


@dataclass(frozen=True, slots=True)
class ChildOptions:
    model: Path | None  # None: fetched from --hf-repo as the model loads
    host: str
    port: int
    alias: str
    ctx_size: int
    temp: float
    seed: int
    n_predict: int
    batch_size: int
    parallel: int
    threads: int | None
    n_gpu_layers: int
    mmproj: Path | None
    sleep_idle_seconds: float  # < 0: never sleep
    verbose: bool
    # LLAMA_API_KEY, as llama-server reads it: the router gives each child a random key of its
    # own and proxies with it, so no one reaches a child's port around the router's own key
    api_key: str | None = None
    # llama-server flags given that this child does not act on (as written, or their variable)
    no_effect: tuple[str, ...] = ()
    # the endpoints llama-server serves only when asked (--embeddings, --metrics) or until told
    # not to (--no-slots); off, they answer 501
    embeddings: bool = False
    pooling: str | None = None  # --pooling: none, mean, cls, last, rank; None: the model's
    metrics: bool = False
    slots: bool = True
    hf_repo: str | None = None  # user/repo[:TAG]: fetched into the cache when --model is not given
    hf_file: str | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints usage + message and exits 2; keep that, but point at --help.
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


class _Accept(argparse.Action):
    """A llama-server flag this child takes and does nothing with: remembered, to be listed."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        namespace.no_effect = [*namespace.no_effect, option_string]


class Version(argparse.Action):
    """--version: llama-server's two lines on stderr, then exit 0."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show version and build info")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        parser.exit(0, flags.VERSION_TEXT)


def _layers(text: str) -> int:
    """-ngl: a number, or llama-server's 'auto' and 'all' (-1: all, llama-cpp-python's word)."""
    return -1 if text in ("auto", "all") else int(text)


class _Refuse(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        assert option_string is not None
        parser.error(f"{option_string} is not accepted by a router child: "
                     f"{_REFUSED[option_string]}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m refimpl.child",
        description=(
            "A llama-server-compatible server for one GGUF model, on llama-cpp-python. "
            "A router spawns one per loaded model. With the environment variable "
            f"{ROUTER_PORT_ENV} set it also speaks the router line protocol: "
            "'cmd_child_to_router:state:{...}' lines on stdout (loading, ready, sleeping), "
            "and it exits on 'cmd_router_to_child:exit' or EOF on stdin."
        ),
        epilog=(
            "HTTP: GET /health, /props, /slots, /v1/models (/models); POST /v1/chat/completions "
            "(/chat/completions), /v1/completions, /completion (/completions), /tokenize, "
            "/detokenize; /embedding (/embeddings, /v1/embeddings) with --embeddings, /metrics "
            "with --metrics; each answers 501 when off, as llama-server's do (/slots too, "
            "with --no-slots). Errors are {\"error\": {\"code\", \"message\", "
            "\"type\"}}. "
            "With LLAMA_API_KEY set, every endpoint but /health and /v1/models needs "
            "'Authorization: Bearer KEY' (--api-key is refused: argv is world-readable)."
        ),
        allow_abbrev=False,  # '--mod' must not silently mean '--model'
    )
    def add(key: str, **kwargs: object) -> None:
        kwargs.setdefault("dest", key[2:].replace("-", "_"))
        p.add_argument(*flags.BY_KEY[key].names, **kwargs)  # type: ignore[arg-type]

    add("--model", default=None, type=Path, metavar="PATH",
        help="GGUF model file to serve (this or --hf-repo is required)")
    add("--hf-repo", default=None, metavar="<user>/<model>[:quant]",
        help="without --model: fetch this hub model into the cache as it loads, then serve it")
    add("--hf-file", default=None, metavar="FILE", help="the file of --hf-repo to fetch")
    add("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    add("--port", type=int, default=8080,
        help="port to listen on; 0 picks a free one (default: 8080)")
    add("--alias", default=None, metavar="NAME",
        help="model id reported by /v1/models and in the ready message "
             "(default: the model file's stem)")
    add("--ctx-size", type=int, default=512, metavar="N",
        help="context size in tokens; 0 takes the model's training context (default: 512)")
    add("--temperature", dest="temp", type=float, default=0.8, metavar="N",
        help="default sampling temperature for requests that set none (default: 0.8)")
    add("--seed", type=int, default=-1,
        help="default RNG seed for requests that set none; -1 = random (default: -1)")
    add("--n-predict", type=int, default=-1, metavar="N",
        help="default number of tokens to predict; -1 = until end of text or context "
             "(default: -1)")
    add("--batch-size", type=int, default=2048, metavar="N",
        help="logical batch size for prompt processing (default: 2048)")
    add("--parallel", type=int, default=1, metavar="N",
        help="number of slots reported, -1 = auto (1); requests are served one at a time "
             "behind a lock (default: 1)")
    add("--threads", type=int, default=None, metavar="N",
        help="CPU threads for generation, -1 = auto (default: llama-cpp-python's choice)")
    add("--n-gpu-layers", dest="n_gpu_layers", type=_layers, default=0, metavar="N",
        help="layers to offload to a GPU, if llama.cpp was built with one; 'auto' and 'all' "
             "offload all (default: 0)")
    add("--mmproj", type=Path, default=None, metavar="PATH",
        help="multimodal projector file; recorded and reported, not used")
    add("--sleep-idle-seconds", type=float, default=-1.0, metavar="S",
        help="free the weights after S seconds without a request and reload them on "
             "the next one; -1 = never (default: -1)")
    add("--log-verbose", dest="verbose", action="store_true",
        help="let llama.cpp log what it loads and decodes")
    add("--embeddings", action="store_true",
        help="serve POST /embedding, /embeddings and /v1/embeddings (default: 501)")
    add("--pooling", choices=flags.BY_KEY["--pooling"].choices, default=None,
        help="how /embedding pools a prompt's token embeddings (default: the model's)")
    add("--metrics", action="store_true",
        help="serve GET /metrics, Prometheus text (default: 501)")
    add("--slots", action="store_true", default=True,
        help="serve GET /slots (default: on)")
    p.add_argument(*flags.BY_KEY["--slots"].negative, dest="slots", action="store_false",
                   help="GET /slots answers 501")
    p.add_argument("--version", action=Version)
    p.set_defaults(no_effect=[])
    for other in flags.FLAGS:
        names = [n for n in (*other.names, *other.negative) if n not in p._option_string_actions]
        if other.key in ACTS_ON or other.key in _REFUSED or not names:
            continue
        hint = other.value or ""
        p.add_argument(*names, action=_Accept, dest="no_effect",
                       nargs=other.arity or 0, default=[],
                       metavar=tuple(hint.split()) if other.arity == 2 else other.value,
                       help=argparse.SUPPRESS)
    for flag in _REFUSED:
        p.add_argument(flag, action=_Refuse, help=argparse.SUPPRESS)
    return p


def parse_options(argv: Sequence[str] | None = None,
                  env: Mapping[str, str] | None = None) -> ChildOptions:
    parser = build_parser()
    env = os.environ if env is None else env
    words = [flags.normalize(w) for w in (sys.argv[1:] if argv is None else argv)]
    try:
        from_env = flags.from_env(env)
    except flags.FlagError as exc:
        parser.error(str(exc))
    on_cli = {flags.key_of(w.partition("=")[0]) for w in words if w.startswith("-")}
    # this child's own flags from LLAMA_ARG_*, before the command line so that it wins
    defaults = [w for g in from_env if g.flag.key in ACTS_ON and g.flag.key not in on_cli
                for w in (g.flag.names[-1] if g.positive else g.flag.negative[0], *g.values)]
    ns = parser.parse_args(defaults + words)
    if ns.parallel == -1:  # llama-server's "auto"
        ns.parallel = 1
    if ns.threads == -1:
        ns.threads = None
    for name, minimum in (("ctx_size", 0), ("batch_size", 1), ("parallel", 1),
                          ("n_gpu_layers", -1)):
        if getattr(ns, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}")
    if not 0 <= ns.port <= 65535:
        parser.error("--port must be in 0..65535")
    if ns.threads is not None and ns.threads < 1:
        parser.error("--threads must be >= 1")
    model: Path | None = ns.model
    if model is None and not ns.hf_repo:
        parser.error("one of --model or --hf-repo is required")
    return ChildOptions(
        model=model,
        host=ns.host,
        port=ns.port,
        alias=ns.alias if ns.alias else model.stem if model is not None else ns.hf_repo,
        ctx_size=ns.ctx_size,
        temp=ns.temp,
        seed=ns.seed,
        n_predict=ns.n_predict,
        batch_size=ns.batch_size,
        parallel=ns.parallel,
        threads=ns.threads,
        n_gpu_layers=ns.n_gpu_layers,
        mmproj=ns.mmproj,
        sleep_idle_seconds=ns.sleep_idle_seconds if ns.sleep_idle_seconds > 0 else -1.0,
        verbose=ns.verbose,
        embeddings=ns.embeddings,
        pooling=ns.pooling,
        metrics=ns.metrics,
        slots=ns.slots,
        hf_repo=ns.hf_repo or None,
        hf_file=ns.hf_file or None,
        api_key=env.get(API_KEY_ENV) or None,
        no_effect=tuple(dict.fromkeys([
            *ns.no_effect, *(str(g.flag.env) for g in from_env
                             if g.flag.key not in ACTS_ON and g.flag.key not in _REFUSED)])),
    )


def is_router_child() -> bool:
    return ROUTER_PORT_ENV in os.environ
