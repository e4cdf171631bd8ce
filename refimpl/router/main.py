"""``refimpl-router`` / ``python -m refimpl``: build the router from its flags and serve it."""

from __future__ import annotations

import contextlib
import ctypes
import json
import re
import resource
import sys
from typing import Any, AsyncIterator, Callable

import anyio

from refimpl.cache import cache_dir
from refimpl.modalities import architecture
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.core.router import RouterCore

from . import options as router_options
from .debug import delayed
from .app import RouterApp
from .driver import Driver, Spawner, printable
from .memory import device_budget, estimate_need, gguf_complete
from .processes import make_download_spawner, make_spawner
from .sources import ModelEntry, SourceError, card_of, launch_of, load_sources
from .tracefile import TraceWriter


def log(line: str) -> None:
    """The router's log: one line to stderr, its control characters escaped (a model name with a
    newline in it cannot forge a second line)."""
    print(printable(line), file=sys.stderr, flush=True)


SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$")  # llama.cpp's shard names


def example_model(entries: dict[str, ModelEntry]) -> str | None:
    """The model the printed curl should name: the simplest whose GGUF file is whole
    (``gguf_complete``). A plain text model in one file comes before one with a projector or in
    shards (their loads do more, and can fail in more ways), then the smallest, then by name."""
    readable = []
    for entry in entries.values():
        if entry.path is None or not entry.path.exists():
            continue
        try:
            if not gguf_complete(entry.path):
                continue
            size = entry.path.stat().st_size
        except OSError:  # an unreadable file makes a bad example, nothing more
            continue
        plain = entry.mmproj is None and not SPLIT.search(entry.path.name)
        readable.append((not plain, size, entry.name))
    return min(readable)[2] if readable else None


def example_curl(opts: router_options.RouterOptions, model: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}],
                       "max_tokens": 8})
    return (f"curl -s http://{opts.host}:{opts.port}/v1/chat/completions "
            f"-H 'Content-Type: application/json' -d '{body}'")


def build(opts: router_options.RouterOptions) -> tuple[RouterApp, Driver]:
    cache = cache_dir()

    def load_entries() -> list[ModelEntry]:
        entries = load_sources(opts.models_dir, opts.models_preset, opts.child_args, cache)
        for e in entries:  # read here, off the event loop on a reload, as upstream reads them
            e.architecture = architecture(e.path, None if "--no-mmproj" in e.flags
                                          else e.mmproj)
        return entries

    def spec_for(e: ModelEntry) -> ModelSpec:
        return ModelSpec(e.name, aliases=e.aliases, memory=estimate_need(e, devices),
                         stop_timeout=e.stop_timeout if e.stop_timeout is not None
                         else opts.stop_timeout, load_on_startup=e.load_on_startup,
                         launch=launch_of(e), card=card_of(e), ttl=e.ttl, pin=e.pin,
                         concurrency=e.concurrency, group=e.group)

    entries = {e.name: e for e in load_entries()}
    devices = device_budget(opts.models_memory_margin, opts.device_memory)
    specs = tuple(spec_for(e) for e in entries.values())
    core = RouterCore(RouterConfig(models=specs, models_max=opts.models_max, devices=devices,
                                   autoload=opts.models_autoload, policy=opts.policy,
                                   drain_timeout=opts.drain_timeout, ttl=opts.models_ttl,
                                   queue_max=opts.queue_max))
    spawner: Spawner
    spawner, prepare_spawner = make_spawner(opts.child_cmd, opts.port, log)
    download_spawner: Spawner = make_download_spawner(opts.download_cmd, opts.port, log,
                                                      opts.hf_token)
    if opts.debug_fake_timing:  # upstream's test hook: every start (load, download) 2 s late
        spawner, download_spawner = delayed(spawner), delayed(download_spawner)
    driver = Driver(core, spawner, log=log, download_spawner=download_spawner)
    if opts.trace is not None:  # recorded straight into the file, not into a list
        driver.trace = TraceWriter(opts.trace)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            prepare_spawner()  # the zygote, started from the thread the router runs on
            await tg.start(driver.run)
            log(f"router listening on http://{opts.host}:{opts.port} with {len(entries)} "
                f"model(s): {', '.join(entries) or 'none'}")
            example = await anyio.to_thread.run_sync(example_model, dict(entries))
            if example is not None:
                log(f"try: {example_curl(opts, example)}")
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await driver.shutdown(grace=opts.stop_timeout)
                    finally:
                        if isinstance(driver.trace, TraceWriter):
                            driver.trace.close()
                            log(f"trace of {len(driver.trace)} entries written to {opts.trace}")
                tg.cancel_scope.cancel()

    return RouterApp(driver, opts, lifespan=lifespan, load_entries=load_entries,
                     spec_for=spec_for, cache=cache), driver


def concurrency(wanted: int, log: Callable[[str], None]) -> int:
    """The concurrency limit the descriptors allow: the soft limit on open files is raised to
    the hard one, and each request may hold two (its client's and its child's connection) with
    some left for children's pipes and the models' files; past the limit a request gets 503
    rather than a client being left unaccepted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    allowed = max(1, (soft - 256) // 2)
    if wanted > allowed:
        log(f"[router] --limit-concurrency {wanted} lowered to {allowed}: {soft} open files "
            "allowed")
    return min(wanted, allowed)


def main(argv: list[str] | None = None, prog: str = "refimpl-router") -> int:
    try:
        return serve(sys.argv[1:] if argv is None else argv, prog)
    except KeyboardInterrupt:
        # Ctrl-C before the server is up (generating the tiny models, reading the models):
        # nothing is running yet, so nothing to report but the interruption itself.
        log(f"{prog}: interrupted")
        return 130


M_ARENA_MAX = -8  # glibc's mallopt parameter


def one_malloc_arena() -> None:
    """glibc gives each thread that allocates its own malloc arena; the router's threads (child
    output relays, anyio's workers) allocate little, and one arena for all is 1.5 MiB less of
    the router's peak memory under ``bench/load.py``. Not glibc: nothing to do."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass


def serve(argv: list[str], prog: str = "refimpl-router") -> int:
    """The router of ``argv``, served until it is stopped; the exit status."""
    one_malloc_arena()
    opts = router_options.parse(argv, prog=prog)
    if opts.no_effect:
        log(f"[router] accepted, no effect here: {' '.join(opts.no_effect)}")
    if opts.debug_fake_timing:
        log(f"[router] {router_options.FAKE_TIMING_ENV}: each start and each routed request "
            "held 2 s")
    if opts.models_dir is None and opts.models_preset is None:
        from fixtures.tiny_models import build_models_dir, default_cache_dir
        log(f"no --models-dir or --models-preset: using generated tiny models in "
            f"{default_cache_dir()}")
        opts.models_dir = str(build_models_dir(default_cache_dir()).root)
    try:
        app, driver = build(opts)
    except SourceError as exc:
        log(f"{prog}: error: {exc}")
        return 2
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # SSE streams never end by themselves: end them first, or uvicorn's graceful
            # shutdown waits for them before it lets the children be stopped.
            driver.close_streams()
            super().handle_exit(sig, frame)

    from .http import protocol

    config = uvicorn.Config(app.app, host=opts.host, port=opts.port, log_level="warning",
                            http=protocol(opts.timeout_header),
                            limit_concurrency=concurrency(opts.limit_concurrency, log),
                            timeout_keep_alive=opts.timeout_keep_alive,  # type: ignore[arg-type]
                            h11_max_incomplete_event_size=opts.max_header_size,
                            server_header=False, date_header=False, lifespan="on", ws="none",
                            # asyncio's own loop, not uvloop (uvicorn's "auto" when installed):
                            # 1.3 MiB less at the peak of bench/load.py (uvloop's library and its
                            # four resolver threads), the proxy still below llama-server's
                            # overhead (docs/BENCHMARKS.md)
                            loop="asyncio",
                            timeout_graceful_shutdown=5)
    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn stops gracefully on Ctrl-C (the children have exited by now), then raises
        # SIGINT again for its caller. Ctrl-C is how a user stops the router: a clean stop,
        # unless it came before the router was up.
        return 0 if server.started else 130
    return 0 if server.started else 1

