"""Load: K concurrent clients across M models, with models_max < M, for T seconds, on real children.

    python bench/load.py                            # K=64, M=4, models_max=2, T=60 s: refimpl
    python bench/load.py --router-bin PATH          # ... and llama-server's router, side by side
    python bench/load.py --write                    # record the table in docs/BENCHMARKS.md
    python bench/load.py -k 8 -m 3 -t 5 --mutant Z3 # a router with a known bug: the checks fail

Each client loops until T: a chat completion for a model drawn at random, streamed or not, a few
of the streams dropped by the client after their first chunk. Then no new request starts, the ones
in flight get ``--drain`` seconds, and the router is stopped with SIGTERM.

Figures per router: requests ok; errors by type; lost (no HTTP answer at all: must be 0);
children alive after shutdown (orphans: must be 0); the highest number of running children,
sampled from the router's child processes (psutil) and from ``GET /models`` (never above
models_max); loads and evictions (from ``/models/sse``); loads per served request; p50 and p99
latency of the requests served (send to last byte); the router's peak memory (VmHWM). What the
clients saw (their requests and ``/models/sse``) is checked with the invariant functions
(``properties/observed.py``).

Exit status 1 when, for any router, a request was lost, a child outlived it, the limit was
exceeded, or an invariant failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from conformance.process import RouterProcess  # noqa: E402
from fixtures.procs import alive, children_of  # noqa: E402
from fixtures.tiny_models import build_models_dir, default_cache_dir  # noqa: E402
from properties import mutants  # noqa: E402
from properties.invariants import CHECKS, check_all  # noqa: E402
from properties.observed import OBSERVABLE, check_observed  # noqa: E402
from properties.replay import history  # noqa: E402
from refimpl.core.config import ModelSpec, RouterConfig  # noqa: E402
from refimpl.router.processes import free_port  # noqa: E402
from refimpl.router.tracefile import read_trace  # noqa: E402

MARK = "<!-- load -->"
# From a client's seat the moment a request reached the router, or its last byte left it, is
# known only to within the router's intake latency and the clients' own event-loop lag (tens to
# hundreds of ms at 64 clients on 2 cores). These two guarantees hinge on exactly those moments
# (was the request in flight, or waiting, when the child was stopped?), so in the client's view
# they are reported, not gated on; the reference router's own trace judges them exactly.
TIMING_SENSITIVE = ("busy_never_evicted", "no_thrash")
GATED = tuple(name for name in OBSERVABLE if name not in TIMING_SENSITIVE)
RUNNING = ("loading", "loaded", "sleeping")
FILES = ("tiny-xs", "tiny-s", "tiny-m", "tiny-l")  # model i is a link to FILES[i % 4]
NO_STOP = {"2": -100, "260": -100}  # no </s>, no <|im_end|>: talk until max_tokens


@dataclass
class Settings:
    clients: int = 64
    models: int = 4
    models_max: int = 2
    seconds: float = 60.0
    stream_share: float = 0.5
    drop_share: float = 0.1  # of the streams: the client leaves after the first chunk
    max_tokens: int = 8
    drain: float = 120.0
    seed: int = 0
    progress_every: float = 5.0
    child_cmd: str | None = None
    mutant: str | None = None
    stop_signal: str = "TERM"  # KILL: what a router that dies leaves behind
    keepalive: bool = True  # False: a new connection for every request
    trace_dir: Path | None = None  # where each router's observed trace goes, one JSON line each


@dataclass
class Result:
    router: str
    ok: int = 0
    dropped: int = 0  # streams the client left on purpose
    errors: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    peak_children: int = 0
    peak_running: int = 0  # from GET /models
    child_samples: int = 0
    models_samples: int = 0
    loads: int = 0
    evictions: int = 0
    crashes: int = 0
    orphans: list[int] = field(default_factory=list)
    children_seen: int = 0
    peak_memory_kib: int = 0
    violations: list[str] = field(default_factory=list)  # client view, gated ones
    flagged: list[str] = field(default_factory=list)  # client view, timing-sensitive ones
    router_violations: list[str] | None = None  # the router's own trace (reference router)
    router_trace_items: int = 0
    stop_seconds: float = 0.0
    wall: float = 0.0

    @property
    def sent(self) -> int:
        return self.ok + self.dropped + sum(self.errors.values()) + sum(self.lost.values())

    def failures(self, models_max: int) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{sum(self.lost.values())} request(s) lost")
        if self.orphans:
            out.append(f"{len(self.orphans)} child(ren) outlived the router: {self.orphans}")
        if models_max and max(self.peak_children, self.peak_running) > models_max:
            out.append(f"limit exceeded: {self.peak_children} children, {self.peak_running} "
                       f"running in /models, models_max {models_max}")
        if self.violations:
            out.append(f"{len(self.violations)} invariant violation(s) in the client's view")
        if self.router_violations:
            out.append(f"{len(self.router_violations)} invariant violation(s) in the router's "
                       "own trace")
        if not self.ok:
            out.append("no request was served")
        return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def models_dir(n: int) -> tuple[Path, list[str]]:
    """A temporary models dir of ``n`` links to the tiny models, named ``load-0`` ..."""
    tiny = build_models_dir(default_cache_dir())
    root = Path(tempfile.mkdtemp(prefix="load-models-"))
    names = [f"load-{i}" for i in range(n)]
    for i, name in enumerate(names):
        (root / f"{name}.gguf").symlink_to(tiny[FILES[i % len(FILES)]].path)
    return root, names


class Run:
    """One router under load: its process (``conformance.process.RouterProcess``: log,
    ``/models/sse``, children, stop), the clients, the ``GET /models`` sampler and what they saw."""

    def __init__(self, name: str, command: list[str], names: list[str], s: Settings,
                 env: dict[str, str], log_path: Path) -> None:
        self.name, self.names, self.s = name, names, s
        self.command, self.env, self.log_path = command, env, log_path
        self.router: RouterProcess | None = None
        self.result = Result(name)
        self.router_trace: Path | None = None  # set for the reference router
        self.in_flight = 0
        self._req = 0

    @property
    def url(self) -> str:
        assert self.router is not None
        return self.router.url

    def note(self, kind: str, **data: Any) -> None:
        assert self.router is not None
        self.router.note(kind, **data)

    def config(self) -> RouterConfig:
        return RouterConfig(models=tuple(ModelSpec(n) for n in self.names),
                            models_max=self.s.models_max)

    def counts(self) -> tuple[int, int, int]:
        """(loads, evictions, crashes) in what the clients saw, read by the invariants' own
        replay (``properties.replay``) of the observed trace: a load is a child started, an
        eviction a child stopped for room, a crash a child that ended without being stopped."""
        assert self.router is not None
        with self.router.events.lock:
            trace = self.router.observed.trace()
        children = history(trace, self.config()).children.values()
        return (len(children), sum(1 for c in children if c.stop == "evicted"),
                sum(1 for c in children if c.exited_at is not None and c.stop is None))

    # -- samplers --------------------------------------------------------------------------------

    async def _sample_models(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                data = (await client.get(self.url + "/models")).json()["data"]
                running = sum(1 for m in data if m["status"]["value"] in RUNNING)
                self.result.peak_running = max(self.result.peak_running, running)
                self.result.models_samples += 1
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except asyncio.TimeoutError:
                pass

    async def _progress(self, stop: asyncio.Event) -> None:
        r = self.result
        assert self.router is not None
        router = self.router
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.s.progress_every)
            except asyncio.TimeoutError:
                pass
            loads, evictions, _ = self.counts()
            print(f"  [{self.name}] {router.now():5.0f} s: {r.sent} answered, {r.ok} ok, "
                  f"{sum(r.errors.values())} errors, {sum(r.lost.values())} lost, "
                  f"{self.in_flight} in flight; children now/peak "
                  f"{sum(1 for p in children_of(router.proc.pid) if alive(p))}/"
                  f"{router.peak_children}, loads {loads}, evictions {evictions}", flush=True)

    # -- clients ---------------------------------------------------------------------------------

    async def _one(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        self._req += 1
        req = self._req
        model = rng.choice(self.names)
        stream = rng.random() < self.s.stream_share
        drop = stream and rng.random() < self.s.drop_share
        body = {"model": model, "stream": stream, "logit_bias": NO_STOP,
                "max_tokens": rng.randint(1, self.s.max_tokens),
                "messages": [{"role": "user", "content": rng.choice(["hi", "count", "go"])}]}
        r = self.result
        sent = time.monotonic()
        self.in_flight += 1
        self.note("send", req=req, model=model)
        answered = False
        try:
            async with client.stream("POST", self.url + "/v1/chat/completions",
                                     json=body) as response:
                answered = True
                self.note("answer", req=req, model=model, status=response.status_code)
                if response.status_code >= 400:
                    text = (await response.aread()).decode(errors="replace")
                    r.errors[f"HTTP {response.status_code}"] += 1
                    if r.errors[f"HTTP {response.status_code}"] <= 3:
                        print(f"  [{self.name}] {model}: {response.status_code} {text[:200]}",
                              flush=True)
                    return
                if drop:
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            break
                    self.note("end", req=req, ok=False)
                    r.dropped += 1
                    return
                text = (await response.aread()).decode(errors="replace")
                ok = not stream or "[DONE]" in text
                self.note("end", req=req, ok=ok)
                if ok:
                    r.ok += 1
                    r.latencies.append(time.monotonic() - sent)
                else:
                    r.errors["stream broken off"] += 1
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
            if answered:  # the status came, the body did not
                self.note("end", req=req, ok=False)
                r.errors[f"body: {kind}"] += 1
            else:
                self.note("answer", req=req, model=model, status=599, message=kind)
                r.lost[f"no answer: {kind}"] += 1
        except asyncio.CancelledError:
            if not answered:
                self.note("answer", req=req, model=model, status=599, message="drain")
                r.lost["no answer by the end of the drain"] += 1
            else:
                self.note("end", req=req, ok=False)
                r.errors["body unfinished by the end of the drain"] += 1
            raise
        finally:
            self.in_flight -= 1

    async def _client(self, client: httpx.AsyncClient, index: int, until: float) -> None:
        rng = random.Random(self.s.seed * 1_000_003 + index)
        while time.monotonic() < until:
            await self._one(client, rng)

    # -- the run ---------------------------------------------------------------------------------

    async def drive(self) -> None:
        s = self.s
        limits = httpx.Limits(max_connections=s.clients + 8,
                              max_keepalive_connections=s.clients if s.keepalive else 0)
        timeout = httpx.Timeout(s.seconds + s.drain + 60, connect=10)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client, \
                httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10)) as side:
            stop = asyncio.Event()
            samplers = [asyncio.create_task(self._sample_models(side, stop)),
                        asyncio.create_task(self._progress(stop))]
            self.t_start = time.monotonic()
            until = self.t_start + s.seconds
            clients = [asyncio.create_task(self._client(client, i, until))
                       for i in range(s.clients)]
            done, pending = await asyncio.wait(clients, timeout=s.seconds + s.drain)
            for task in pending:  # still waiting after the drain: lost, unless answered
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            self.result.wall = time.monotonic() - self.t_start
            stop.set()
            await asyncio.gather(*samplers)

    def execute(self) -> Result:
        r = self.result
        self.router = router = RouterProcess(self.command, self.log_path, env=self.env)
        try:
            asyncio.run(self.drive())
            router.caught_up()  # the late SSE events
        finally:
            r.peak_memory_kib = router.peak_memory_kib()
            r.orphans = router.stop(signal.Signals[f"SIG{self.s.stop_signal}"])
            r.stop_seconds = router.stop_seconds
            r.children_seen = len(router.seen_children)
            r.peak_children, r.child_samples = router.peak_children, router.child_samples
            r.loads, r.evictions, r.crashes = self.counts()
        config = self.config()
        seen = check_observed(router.observed, config)
        r.violations = [str(v) for v in seen if v.guarantee in GATED]
        r.flagged = [str(v) for v in seen if v.guarantee in TIMING_SENSITIVE]
        if self.router_trace is not None:
            trace = read_trace(self.router_trace)
            r.router_trace_items = len(trace)
            r.router_violations = [str(v) for v in check_all(trace, config)]
        if self.s.trace_dir is not None:
            path = self.s.trace_dir / f"trace-{self.name.split()[0]}.jsonl"
            with path.open("w") as out:
                for t, _, kind, data in router.observed.entries:
                    out.write(json.dumps({"t": round(t, 6), "kind": kind, **data}) + "\n")
        return r


def run_router(name: str, binary: str | None, s: Settings, log_dir: Path) -> Result:
    root, names = models_dir(s.models)
    port = free_port()
    common = ["--host", "127.0.0.1", "--port", str(port), "--models-dir", str(root),
              "--models-max", str(s.models_max)]
    trace = log_dir / f"router-trace-{name.split()[0]}.pickle"
    if binary:
        command = [binary, *common]
    else:  # the reference router, recording its own trace (--trace)
        command = [sys.executable, "-m", "refimpl", "--trace", str(trace), *common]
        if s.child_cmd:
            command += ["--child-cmd", s.child_cmd]
    env = dict(os.environ)  # an inherited mutant stays: the zoo sets it for the whole tree
    if s.mutant and not binary:
        env = mutants.environment(mutants.parse(s.mutant), env)  # applied at its start
    print(f"{name}: {shlex.join(command)}", flush=True)
    try:
        run = Run(name, command, names, s, env, log_dir / f"load-{name.split()[0]}.log")
        if not binary:
            run.router_trace = trace
        return run.execute()
    finally:
        for link in root.iterdir():
            link.unlink()
        root.rmdir()


def table(results: list[Result], s: Settings) -> str:
    def row(label: str, value: Any) -> str:
        return f"| {label} | " + " | ".join(value(r) for r in results) + " |"

    def errors(r: Result) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0"

    def lost(r: Result) -> str:
        n = sum(r.lost.values())
        return f"**{n}**" + (f" ({', '.join(f'{k}: {v}' for k, v in r.lost.items())})"
                             if n else "")

    lines = ["| figure | " + " | ".join(r.router for r in results) + " |",
             "|---|" + "---|" * len(results),
             row("requests answered (sent)", lambda r: str(r.sent)),
             row("ok", lambda r: str(r.ok)),
             row("streams left early by their client", lambda r: str(r.dropped)),
             row("errors by type", errors),
             row("lost (no answer at all)", lost),
             row("children alive after shutdown", lambda r: f"**{len(r.orphans)}** of "
                 f"{r.children_seen} (checked {r.stop_seconds:.1f} s after SIG{s.stop_signal})"),
             row(f"most running children, sampled (models_max {s.models_max})",
                 lambda r: f"**{r.peak_children}** in /proc ({r.child_samples} samples), "
                 f"{r.peak_running} in /models ({r.models_samples} samples)"),
             row("loads / evictions / crashes", lambda r: f"{r.loads} / {r.evictions} / "
                 f"{r.crashes}"),
             row("loads per served request", lambda r: f"{r.loads / max(r.ok, 1):.3f}"),
             row("latency p50 / p99 (served)", lambda r: f"{pct(r.latencies, 0.5) * 1e3:.0f} / "
                 f"{pct(r.latencies, 0.99) * 1e3:.0f} ms"),
             row("throughput", lambda r: f"{r.ok / max(r.wall, 1e-9):.1f} served/s over "
                 f"{r.wall:.0f} s"),
             row("router peak memory (VmHWM)", lambda r: f"{r.peak_memory_kib / 1024:.1f} MiB"),
             row(f"invariants on the router's own trace (all {len(CHECKS)})",
                 lambda r: "not recorded" if r.router_violations is None else
                 f"**{len(r.router_violations)}** violations in {r.router_trace_items} events "
                 f"and commands"),
             row(f"invariants on the clients' view ({len(GATED)} gated)",
                 lambda r: f"**{len(r.violations)}** violations"),
             row(f"clients' view, timing-sensitive ({', '.join(TIMING_SENSITIVE)})",
                 lambda r: f"{len(r.flagged)} flagged"),
             ]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join((__doc__ or "").split("\n")[2:8]))
    d = Settings()
    p.add_argument("-k", "--clients", type=int, default=d.clients, help="concurrent clients "
                   "(%(default)s)")
    p.add_argument("-m", "--models", type=int, default=d.models, help="models (%(default)s)")
    p.add_argument("--models-max", type=int, default=d.models_max,
                   help="the router's --models-max (%(default)s)")
    p.add_argument("-t", "--seconds", type=float, default=d.seconds,
                   help="seconds of load (%(default)s)")
    p.add_argument("--stream-share", type=float, default=d.stream_share,
                   help="share of streamed requests (%(default)s)")
    p.add_argument("--drop-share", type=float, default=d.drop_share,
                   help="share of streams the client leaves after the first chunk (%(default)s)")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help="each request asks for 1..N tokens (%(default)s)")
    p.add_argument("--drain", type=float, default=d.drain,
                   help="seconds the requests in flight at the end get (%(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--router-bin", default=os.environ.get("LLAMA_SERVER_BIN_PATH"),
                   help="also load this llama-server binary in router mode, side by side "
                        "(default: $LLAMA_SERVER_BIN_PATH)")
    p.add_argument("--only-router-bin", action="store_true",
                   help="load only the --router-bin router")
    p.add_argument("--child-cmd", default=None,
                   help="the reference router's child command (default: its real child)")
    p.add_argument("--mutant", default=None,
                   help="run the reference router with these bug-zoo mutants applied "
                        "(Z3, or Z3,Z4; properties/mutants)")
    p.add_argument("--stop-signal", choices=("TERM", "KILL"), default=d.stop_signal,
                   help="how the router is stopped at the end (%(default)s); KILL with children "
                        "that ignore stdin EOF shows the orphan check failing")
    p.add_argument("--no-keepalive", dest="keepalive", action="store_false",
                   help="open a new connection for every request (default: clients keep theirs)")
    p.add_argument("--trace", action="store_true",
                   help="also write what the clients saw, one JSON line per entry, beside the "
                        "logs (trace-<router>.jsonl)")
    p.add_argument("--write", action="store_true", help="record in docs/BENCHMARKS.md")
    p.add_argument("--log-dir", default=None, help="where the routers' logs go (a temp dir)")
    a = p.parse_args(argv)
    if a.models_max < 0 or a.models < 1 or a.clients < 1:
        p.error("need --models >= 1, --clients >= 1, --models-max >= 0")
    s = Settings(clients=a.clients, models=a.models, models_max=a.models_max,
                 seconds=a.seconds, stream_share=a.stream_share, drop_share=a.drop_share,
                 max_tokens=a.max_tokens, drain=a.drain, seed=a.seed, child_cmd=a.child_cmd,
                 mutant=a.mutant, stop_signal=a.stop_signal, keepalive=a.keepalive)
    return a, s


def main(argv: list[str] | None = None) -> int:
    a, s = parse(argv)
    log_dir = Path(a.log_dir or tempfile.mkdtemp(prefix="load-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if a.trace:
        s.trace_dir = log_dir
    runs: list[tuple[str, str | None]] = []
    if not a.only_router_bin:
        runs.append(("refimpl" + (f" (mutant {s.mutant})" if s.mutant else ""), None))
    if a.router_bin:
        runs.append(("llama-server", a.router_bin))
    if not runs:
        print("nothing to run: --only-router-bin needs --router-bin", file=sys.stderr)
        return 2
    results = [run_router(name, binary, s, log_dir) for name, binary in runs]
    text = table(results, s)
    print(text)
    status = 0
    for r in results:
        for v in (r.router_violations or [])[:10] + r.violations[:10] + r.flagged[:5]:
            print(f"  [{r.router}] {v}")
        failures = r.failures(s.models_max)
        print(f"{r.router}: " + ("; ".join(failures) if failures else "all checks held"))
        status |= bool(failures)
    print(f"logs: {log_dir}")
    if a.write:
        words, skip = [], False
        for w in (argv if argv is not None else sys.argv[1:]):
            if skip or w == "--log-dir" or w.startswith("--log-dir="):  # no machine paths
                skip = w == "--log-dir"
                continue
            words.append("PATH" if w == a.router_bin else w)
        cmd = shlex.join(["python", "bench/load.py", *words])
        if a.router_bin and "PATH" not in words:
            cmd = f"LLAMA_SERVER_BIN_PATH=PATH {cmd}"
        section = (f"## Load: {s.clients} clients, {s.models} models, models_max "
                   f"{s.models_max}, {s.seconds:g} s\n\nCommand: `{cmd}` (real "
                   f"children on the tiny models; {int(s.stream_share * 100)}% streamed, "
                   f"{int(s.drop_share * 100)}% of streams left after their first chunk, 1 to "
                   f"{s.max_tokens} tokens each; {platform.python_implementation()} "
                   f"{platform.python_version()}, {os.cpu_count()} cores)\n\n{text}")
        print(f"written to {write_section(MARK, section)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
