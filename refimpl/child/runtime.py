"""The child's life: loading, ready, sleeping, stopping, and the messages each change sends.

One object, driven from the event loop (requests, the idle timer) and from two threads (the model
loader's progress callback, the stdin watcher's exit request). Weights are loaded and freed on
worker threads; the event loop only ever swaps the ``llama`` reference, under ``_transition``, so
sleeping and waking never overlap. A request holds ``in_flight`` from the moment it arrives,
before anything is awaited, so the idle timer cannot free the weights under a request that has
started (the sleep race llama-server has between its idle check and queueing a task).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import llama_cpp

from refimpl import flags, modalities
from refimpl.child.announcer import Announcer
from refimpl.child.cli import ChildOptions
from refimpl.child.model import LoadAborted, LoadFailed, ModelFacts, load_llama, read_facts
from refimpl.core.protocol import LoadingState, Progress, ReadyState, SleepingState, StageStarted

if TYPE_CHECKING:
    from refimpl.child.metrics import Metrics

log = logging.getLogger("refimpl.child")

# llama-server's load stages (server-context.cpp, load_model): the text model, the draft model
# when one is given, then the projector when there is one.
TEXT_STAGE, SPEC_STAGE, MMPROJ_STAGE = "text_model", "spec_model", "mmproj_model"
# The flags that give llama-server's child a draft model (common_params_speculative::has_dft).
# This child accepts them with no effect, and still reports the draft's stage where upstream's
# child does, so that a router sees the same load.
DRAFT_FLAGS = tuple(flags.BY_KEY[k] for k in ("--model-draft", "--hf-repo-draft"))
PROGRESS_STEP = 0.05  # report load progress in steps of at least this much (and always 1.0)


def has_draft(options: ChildOptions) -> bool:
    """Whether the command line or the environment gave a draft model."""
    for word in options.no_effect:
        found = flags.lookup(word)
        if (found is not None and found[0] in DRAFT_FLAGS) or any(
                word == f.env for f in DRAFT_FLAGS):
            return True
    return False


class ChildState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    SLEEPING = "sleeping"
    FAILED = "failed"


class NotServing(Exception):
    """The model cannot serve a request now; ``message`` is what the client is told."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ChildRuntime:
    def __init__(self, options: ChildOptions, announcer: Announcer) -> None:
        self.options = options
        self.announcer = announcer
        self.state = ChildState.LOADING
        self.llama: llama_cpp.Llama | None = None
        self.facts: ModelFacts | None = None
        self.created = int(time.time())
        self.in_flight = 0
        self.last_activity = time.monotonic()
        self.exit_code = 0
        self.exit_requested = threading.Event()
        # Set by the server: stops the HTTP server (called on the event loop).
        self.stop_serving: Callable[[], None] = lambda: None
        # Set by the app: holds the model exclusively (no request is using it) while it is freed.
        self.exclusive: Callable[[], AbstractAsyncContextManager[Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transition = asyncio.Lock()
        self._last_progress: dict[str, float] = {}
        self.has_draft = has_draft(options)
        self.stages = self._stages()
        self.architecture: dict[str, list[str]] = {"input_modalities": ["text"],
                                                   "output_modalities": ["text"]}
        self._first_load: concurrent.futures.Future[llama_cpp.Llama] | None = None
        self._load_started = 0.0
        # /metrics' totals (--metrics): they outlive a sleep, so they live here, not with a load
        self.metrics: Metrics | None = None
        if options.metrics:
            from refimpl.child.metrics import Metrics
            self.metrics = Metrics(options.batch_size)

    # -- what the router and clients see ----------------------------------------------------

    def models_entry(self) -> dict[str, Any]:
        """This model's ``/v1/models`` entry: also the ``ready`` message's payload."""
        # --tags is not acted on here (accepted, no effect): no tags
        entry: dict[str, Any] = {"id": self.options.alias, "aliases": [self.options.alias],
                                 "tags": [], "object": "model",
                                 "architecture": self.architecture,
                                 "created": self.created, "owned_by": "llamacpp"}
        if self.facts is not None:
            entry["meta"] = self.facts.meta()
        return entry

    # -- loading --------------------------------------------------------------------------------

    def _report_progress(self, value: float, stage: str = TEXT_STAGE) -> bool:
        if self.exit_requested.is_set():
            return False  # abort the load: llama.cpp stops reading tensors
        value = min(max(value, 0.0), 1.0)
        last = self._last_progress.get(stage, -1.0)
        if value >= 1.0 or value - last >= PROGRESS_STEP:
            if value > last:
                self._last_progress[stage] = value
                self.announcer.send(LoadingState(Progress(self.stages, stage, value)))
        return True

    def _read_modalities(self, llama: llama_cpp.Llama) -> None:
        """What the model takes and gives (``architecture``, as llama-server's child reports
        it). The projector is a stage of its own: this child serves text only, so loading it is
        reading what its header says it encodes."""
        projector: dict[str, object] = {}
        if self.options.mmproj is not None:
            # upstream's child says the stage starts, bare, before its loader's first value
            self.announcer.send(LoadingState(StageStarted(MMPROJ_STAGE)))
            self._report_progress(0.0, MMPROJ_STAGE)
            projector = modalities.read_metadata(self.options.mmproj)
            self._report_progress(1.0, MMPROJ_STAGE)
        self.architecture = modalities.from_metadata(llama.metadata, projector)

    def _fetch(self) -> None:
        """``--hf-repo`` without ``--model``: fetch the model (and its projector) into the cache
        before loading it, as llama-server's child does (common/arg.cpp): quietly, its router
        hears ``loading`` only. The exit command cancels the transfer."""
        from refimpl.child.download import Cancelled, download
        repo = self.options.hf_repo
        if repo is None:
            raise LoadFailed("no model file (give --model, or --hf-repo to fetch one)")
        started = time.perf_counter()
        try:
            files = download(repo, Announcer.silent(), self.exit_requested, self.options.hf_file)
        except Cancelled:
            raise LoadAborted() from None
        except Exception as exc:  # noqa: BLE001 - any failure fails the load, said in one line
            raise LoadFailed(f"could not fetch {repo}: {type(exc).__name__}: {exc}") from None
        model = next(f for f in files if not f.name.startswith("mmproj"))
        mmproj = self.options.mmproj or next(
            (f for f in files if f.name.startswith("mmproj")), None)
        log.info("fetched %s in %.3f s: %s", repo, time.perf_counter() - started,
                 ", ".join(f.name for f in files))
        self.options = dataclasses.replace(self.options, model=model, mmproj=mmproj)
        self.stages = self._stages()

    def _stages(self) -> tuple[str, ...]:
        return (TEXT_STAGE, *((SPEC_STAGE,) if self.has_draft else ()),
                *((MMPROJ_STAGE,) if self.options.mmproj is not None else ()))

    def _load(self, report: bool) -> llama_cpp.Llama:
        if self.options.model is None:
            self._fetch()
            self._report_progress(0.0)
        on_progress = self._report_progress if report else (
            lambda _value: not self.exit_requested.is_set())
        return load_llama(self.options, on_progress,
                          self.metrics.generated if self.metrics is not None else None)

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that ``request_exit`` (called from other threads) hands the stop to."""
        self._loop = loop

    def start_loading(self) -> None:
        """Start the first load on a thread now, while the HTTP stack is still being imported."""
        if self._first_load is not None:
            return
        if self.options.model is not None:  # else once fetched: upstream's child says it then
            self._report_progress(0.0)
        self._load_started = time.perf_counter()
        future: concurrent.futures.Future[llama_cpp.Llama] = concurrent.futures.Future()
        self._first_load = future

        def run() -> None:
            try:
                future.set_result(self._load(True))
            except BaseException as exc:  # handed to load_first, which reports it
                future.set_exception(exc)

        threading.Thread(target=run, name="model-loader", daemon=True).start()

    async def load_first(self) -> bool:
        """Finish the first load (starting it if need be); True when the model can serve."""
        self.start_loading()
        assert self._first_load is not None
        try:
            llama = await asyncio.wrap_future(self._first_load)
        except LoadAborted:
            log.info("load of %s abandoned: exit requested", self.options.model)
            self.state = ChildState.FAILED
            return False
        except LoadFailed as exc:
            log.error("%s", exc)
            self.state = ChildState.FAILED
            self.exit_code = 1
            return False
        self._report_progress(1.0)
        if self.has_draft:  # accepted, not loaded: its stage starts and ends, as for MTP there
            self._report_progress(0.0, SPEC_STAGE)
            self._report_progress(1.0, SPEC_STAGE)
        self._read_modalities(llama)
        self.llama = llama
        self.facts = read_facts(llama)
        self.state = ChildState.READY
        self.last_activity = time.monotonic()
        log.info("loaded %s as %r in %.3f s (n_ctx %d)", self.options.model, self.options.alias,
                 time.perf_counter() - self._load_started, self.facts.n_ctx)
        return True

    def announce_ready(self) -> None:
        self.announcer.send(ReadyState(self.models_entry()))

    # -- requests -------------------------------------------------------------------------------

    async def ensure_awake(self) -> None:
        """Make the model ready for a request that already counts in ``in_flight``."""
        if self.state is ChildState.READY:
            return
        if self.state is ChildState.LOADING:
            raise NotServing("Loading model")
        if self.state is ChildState.FAILED:
            raise NotServing("the model is not available")
        async with self._transition:
            if self.state is not ChildState.SLEEPING:
                return await self.ensure_awake()
            started = time.perf_counter()
            try:
                llama = await asyncio.to_thread(self._load, False)
            except (LoadFailed, LoadAborted) as exc:
                log.error("could not wake up: %s", exc)
                self.state = ChildState.FAILED
                self.exit_code = 0 if isinstance(exc, LoadAborted) else 1
                self.stop_serving()
                raise NotServing("the model could not be reloaded after sleeping", 500) from None
            self.llama = llama
            self.state = ChildState.READY
            log.info("woke up in %.3f s", time.perf_counter() - started)
            self.announcer.send(ReadyState({}))

    def request_started(self) -> None:
        self.in_flight += 1

    def request_ended(self) -> None:
        self.in_flight -= 1
        self.last_activity = time.monotonic()

    # -- sleeping -------------------------------------------------------------------------------

    async def sleep_when_idle(self, idle_seconds: float) -> None:
        """Run forever: free the weights once nothing has been asked for ``idle_seconds``."""
        while True:
            if self.state is ChildState.READY and self.in_flight == 0:
                remaining = self.last_activity + idle_seconds - time.monotonic()
                if remaining <= 0:
                    await self._fall_asleep()
                    continue
                await asyncio.sleep(remaining)
            else:
                await asyncio.sleep(min(idle_seconds, 0.1))

    async def _fall_asleep(self) -> None:
        async with self._transition:
            if self.state is not ChildState.READY or self.in_flight:
                return
            llama, self.llama = self.llama, None
            self.state = ChildState.SLEEPING  # from here on a request waits in ensure_awake
            assert llama is not None
            if self.exclusive is not None:
                async with self.exclusive():
                    await asyncio.to_thread(llama.close)
            else:
                await asyncio.to_thread(llama.close)
            del llama
            log.info("sleeping after %.1f s idle: weights freed", self.options.sleep_idle_seconds)
            self.announcer.send(SleepingState())

    # -- exiting --------------------------------------------------------------------------------

    def request_exit(self, reason: str) -> None:
        """Thread-safe: stop loading (if still loading) and shut the HTTP server down."""
        log.info("exiting: %s", reason)
        self.exit_requested.set()
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.stop_serving)
            except RuntimeError:  # the loop already closed: we are on our way out anyway
                pass
