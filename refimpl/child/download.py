"""The download child: ``LLAMA_SERVER_CHILD_MODE=download`` with ``LLAMA_ARG_HF_REPO=user/repo:TAG``.

It fetches the model's GGUF file(s), and its ``mmproj*`` projector when the repo has one, into the
cache (the Hugging Face hub layout, see ``refimpl.cache``) with huggingface_hub, from the hub that
``HF_ENDPOINT`` names. While it works it reports ``downloading`` progress to the router, at most
every 100 ms and at least twice a second; then ``download_finished`` or ``download_failed``; then
it waits for the router's exit command, as upstream's download child does.

The exit command or EOF on stdin cancels the transfer: the file being written is dropped by
huggingface_hub, and the files this download had already finished are removed too, so the cache
never lists a model that is only partly there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

from refimpl.cache import BadName, cache_dir, select_files, split_name
from refimpl.child.announcer import Announcer
from refimpl.core.protocol import EXIT_COMMAND, DownloadProgress, DownloadResult, LineReader

log = logging.getLogger("refimpl.child.download")

MODE_ENV = "LLAMA_SERVER_CHILD_MODE"
REPO_ENV = "LLAMA_ARG_HF_REPO"
MIN_GAP = 0.1  # seconds between two progress messages, at least
HEARTBEAT = 0.5  # seconds without a message after which the last progress is said again
CHUNK = 64 * 1024  # bytes per read: progress and cancellation act at this granularity


class Cancelled(Exception):
    """The router asked this child to stop (exit command or EOF on stdin)."""


class Reporter:
    """Holds the latest progress; a thread sends it, throttled, while a download runs."""

    def __init__(self, announcer: Announcer) -> None:
        self.announcer = announcer
        self.lock = threading.Lock()
        self.current: DownloadProgress | None = None
        self.sent: DownloadProgress | None = None
        self.last_sent = 0.0
        self.done = threading.Event()

    def update(self, progress: DownloadProgress) -> None:
        with self.lock:
            self.current = progress

    def run(self) -> None:
        while not self.done.wait(MIN_GAP / 2):
            self.tick()

    def tick(self, final: bool = False) -> None:
        with self.lock:
            progress, now = self.current, time.monotonic()
            if progress is None or now - self.last_sent < MIN_GAP:
                if not final or progress is None:
                    return
                time.sleep(MIN_GAP - (now - self.last_sent))  # keep the 100 ms gap
                now = time.monotonic()
            if progress == self.sent and now - self.last_sent < HEARTBEAT and not final:
                return
            self.announcer.send(progress)
            self.sent, self.last_sent = progress, now

    def finish(self) -> None:
        self.done.set()
        if self.current != self.sent:
            self.tick(final=True)


def _watch_stdin(cancel: threading.Event) -> None:
    reader = LineReader()
    while True:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            cancel.set()  # EOF: the router is gone
            return
        if any(line == EXIT_COMMAND.rstrip(b"\n") for line in reader.feed(data)):
            cancel.set()
            return


def _progress_class(reporter: Reporter, url: str, cancel: threading.Event) -> type:
    from tqdm import tqdm  # type: ignore[import-untyped]

    class Progress(tqdm):  # type: ignore[misc]
        """huggingface_hub's progress bar, turned into protocol messages; raising in
        ``update`` is how a cancel reaches the transfer."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True  # no bar on the terminal; counting still works
            super().__init__(*args, **kwargs)
            reporter.update(DownloadProgress(url, int(self.n), int(self.total or 0)))

        def update(self, n: float | None = 1) -> bool | None:
            if cancel.is_set():
                raise Cancelled()
            self.n += n or 0
            reporter.update(DownloadProgress(url, int(self.n), int(self.total or 0)))
            return None

    return Progress


def download(name: str, announcer: Announcer, cancel: threading.Event,
             filename: str | None = None) -> list[Path]:
    """Fetch ``name`` into the cache (with ``filename``, that file of the repo and no other, as
    ``--hf-file`` names it); return the files. Raises on failure or :class:`Cancelled`."""
    import huggingface_hub
    from huggingface_hub import HfApi, hf_hub_download

    huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE = CHUNK
    repo, tag = split_name(name)
    root = cache_dir()
    info = HfApi().model_info(repo)
    files = [s.rfilename for s in info.siblings or []]
    if filename is not None:
        if filename not in files:
            raise LookupError(f"{repo} has no file {filename}")
        wanted = [filename]
    else:
        chosen = select_files(files, tag)
        if chosen is None:
            raise LookupError(f"{repo} has no GGUF model file with tag {tag or '(any)'}")
        wanted = [*chosen.files, *([chosen.mmproj] if chosen.mmproj else [])]
    endpoint = huggingface_hub.constants.ENDPOINT
    reporter = Reporter(announcer)
    thread = threading.Thread(target=reporter.run, name="progress", daemon=True)
    thread.start()
    done: list[Path] = []
    try:
        for filename in wanted:
            if cancel.is_set():
                raise Cancelled()
            url = f"{endpoint}/{repo}/resolve/main/{filename}"
            path = hf_hub_download(repo, filename, cache_dir=root,
                                   tqdm_class=_progress_class(reporter, url, cancel))
            done.append(Path(str(path)))
    finally:
        reporter.finish()
    return done


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s download[%(process)d] %(levelname)s %(message)s")
    name = os.environ.get(REPO_ENV, "")
    announcer = Announcer.for_router() if "LLAMA_SERVER_ROUTER_PORT" in os.environ \
        else Announcer.silent()
    cancel = threading.Event()
    threading.Thread(target=_watch_stdin, args=(cancel,), name="stdin", daemon=True).start()
    ok = False
    try:
        files = download(name, announcer, cancel)
        ok = True
        log.info("downloaded %s: %s", name, ", ".join(p.name for p in files))
    except Cancelled:
        log.info("download of %s cancelled", name)
    except BadName as exc:
        log.error("%s=%r: %s", REPO_ENV, name, exc)
    except Exception as exc:  # noqa: BLE001 - any failure is reported as download_failed
        log.error("download of %s failed: %s: %s", name, type(exc).__name__, exc)
    if not ok:
        _remove_unfinished(name)
    announcer.send(DownloadResult(ok))
    cancel.wait()  # the router answers the result with the exit command
    return 0


def _remove_unfinished(name: str) -> None:
    """What this download got done must not make the cache list a partial model."""
    from refimpl.cache import remove_cached
    try:
        remove_cached(cache_dir(), name)
    except (BadName, OSError) as exc:
        log.warning("could not clean up after %s: %s", name, exc)
