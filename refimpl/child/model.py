"""Loading and freeing the weights, and the facts about a model that outlive them.

``load_llama`` builds a ``llama_cpp.Llama`` and reports load progress. llama.cpp reports progress
through ``llama_model_params.progress_callback``, but ``Llama.__init__`` builds its params from
``llama_model_default_params()`` and loads from them in the same call, with no way to pass a
callback in. So for the duration of our own load (one at a time, under a lock) that factory is
wrapped to add the callback. The callback's return value is llama.cpp's abort switch: returning
False stops a load, which is how an exit request interrupts a model still loading.

llama.cpp's own log goes through ``_LlamaCppLog``: llama-cpp-python's handler maps ggml's log
levels with an outdated table (its "debug" is today's "error") and so hides exactly the line that
says why a model failed to load; and with ``verbose=False`` it points fds 1 and 2 at /dev/null,
process-wide, while it loads. Warnings and errors are written here to a private duplicate of
stderr, so they survive that, and the last errors are kept for the ``LoadFailed`` message. (Other
log lines written while a load runs are still lost; protocol lines use their own descriptor.)

``ModelFacts`` keeps what ``/v1/models`` and ``/props`` report, read once after the first load, so
those endpoints still answer while the model sleeps (llama-server does the same: ``/health`` and
``/props`` must not wake it).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_low

from refimpl.child import chat, context, detokenize, timings
from refimpl.child.cli import ChildOptions

log = logging.getLogger("refimpl.child")

GGUF_MAGIC = b"GGUF"
# llama.cpp's default physical batch (llama_context_default_params().n_ubatch); with embeddings
# on, llama-server lowers the logical batch to it (an embedding is computed in one ubatch)
N_UBATCH = 512
# --pooling's words: enum llama_pooling_type
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}

ProgressFn = Callable[[float], bool]  # progress 0..1 -> keep loading?


class LoadFailed(Exception):
    """The model could not be loaded; the message says why."""


class LoadAborted(Exception):
    """The load was stopped on purpose (an exit was requested while it ran)."""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    n_ctx: int
    n_ctx_train: int
    n_vocab: int
    n_embd: int
    n_params: int
    size: int
    vocab_type: int
    ftype: str  # llama.cpp's name for the weights' type ("all F32", "Q4_K - Medium")
    chat_template: str
    bos_token: str
    eos_token: str

    def meta(self) -> dict[str, Any]:
        """The ``meta`` object of a llama-server ``/v1/models`` entry."""
        return {"vocab_type": self.vocab_type, "n_vocab": self.n_vocab, "n_ctx": self.n_ctx,
                "n_ctx_train": self.n_ctx_train, "n_embd": self.n_embd,
                "n_params": self.n_params, "size": self.size, "ftype": self.ftype}


class _LlamaCppLog:
    """Receives llama.cpp's log lines (from any thread): echoes them, remembers recent errors."""

    # enum ggml_log_level in ggml.h
    WARN, ERROR, CONT = 3, 4, 5

    def __init__(self) -> None:
        self.verbose = False
        self.errors: collections.deque[str] = collections.deque(maxlen=8)
        self._last_level = 0
        self._stderr = os.dup(2)
        self._c_callback = llama_low.llama_log_callback(self._receive)
        llama_low.llama_log_set(self._c_callback, ctypes.c_void_p(0))

    def _receive(self, level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        if level == self.CONT:
            level = self._last_level
        self._last_level = level
        if level >= self.ERROR and text.strip():
            self.errors.append(text.decode("utf-8", errors="replace").strip())
        if self.verbose or level >= self.WARN:
            try:
                os.write(self._stderr, text)
            except OSError:
                pass


_llama_cpp_log = _LlamaCppLog()
_params_lock = threading.Lock()


@contextmanager
def _progress_reported(on_progress: ProgressFn) -> Iterator[None]:
    def callback(progress: float, _user_data: ctypes.c_void_p) -> bool:
        try:
            return bool(on_progress(float(progress)))
        except Exception:  # an exception must not unwind through C
            log.exception("progress callback failed")
            return True

    # C keeps only a raw pointer: this frame holds the ctypes object until the load is over.
    c_callback = llama_low.llama_progress_callback(callback)
    original = llama_low.llama_model_default_params

    def params_with_progress() -> Any:
        params = original()
        params.progress_callback = c_callback
        return params

    with _params_lock:
        llama_low.llama_model_default_params = params_with_progress
        try:
            yield
        finally:
            llama_low.llama_model_default_params = original


def check_gguf(options: ChildOptions) -> None:
    """Fail fast, with a message that says what is wrong, before llama.cpp tries the file."""
    if options.model is None:
        raise LoadFailed("no model file (give --model, or --hf-repo to fetch one)")
    try:
        with open(options.model, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise LoadFailed(f"cannot open model file {options.model}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise LoadFailed(f"{options.model} is not a GGUF file (starts with {magic!r}, "
                         f"expected {GGUF_MAGIC!r})")


def load_llama(options: ChildOptions, on_progress: ProgressFn,
               on_generation: Callable[[timings.Generation], None] | None = None
               ) -> llama_cpp.Llama:
    """Load the model; blocking, meant for a worker thread. Raises LoadFailed or LoadAborted.

    ``on_progress`` returning False aborts the load (LoadAborted); ``on_generation`` is told of
    each generation once it ends.
    """
    check_gguf(options)
    seed = llama_cpp.LLAMA_DEFAULT_SEED if options.seed < 0 else options.seed
    kwargs: dict[str, Any] = dict(
        model_path=str(options.model),
        n_ctx=options.ctx_size,
        n_batch=options.batch_size,
        n_gpu_layers=options.n_gpu_layers,
        seed=seed,
        verbose=options.verbose,
    )
    if options.threads is not None:
        kwargs["n_threads"] = options.threads
        kwargs["n_threads_batch"] = options.threads
    if options.embeddings:
        kwargs["embedding"] = True
        kwargs["n_batch"] = min(options.batch_size, N_UBATCH)  # as llama-server (server.cpp)
        if options.pooling is not None:
            kwargs["pooling_type"] = POOLING[options.pooling]
    stopped = False

    def progress(value: float) -> bool:
        nonlocal stopped
        keep_going = on_progress(value)
        stopped = stopped or not keep_going
        return keep_going

    _llama_cpp_log.verbose = options.verbose
    try:
        with _progress_reported(progress):
            _llama_cpp_log.errors.clear()
            llama = llama_cpp.Llama(**kwargs)
    except Exception as exc:
        if stopped:
            raise LoadAborted() from None
        why = "; ".join(_llama_cpp_log.errors) or str(exc)
        raise LoadFailed(f"llama.cpp could not load {options.model}: {why}") from None
    if options.embeddings:
        # llama-server turns embeddings on per batch, for the batches that embed
        # (llama_set_embeddings); generation runs without them, as without --embeddings
        llama_low.llama_set_embeddings(llama.ctx, False)
    return timings.recorded(chat.like_llama_server(context.within_context(
        detokenize.linear(llama))), on_generation)


def read_facts(llama: llama_cpp.Llama) -> ModelFacts:
    model = llama._model  # the public Llama API has no n_params / size / vocab_type
    return ModelFacts(
        n_ctx=llama.n_ctx(),
        n_ctx_train=model.n_ctx_train(),
        n_vocab=llama.n_vocab(),
        n_embd=llama.n_embd(),
        n_params=model.n_params(),
        size=model.size(),
        vocab_type=model.vocab_type(),
        ftype=ftype_name(model.model),
        chat_template=llama.metadata.get("tokenizer.chat_template", ""),
        bos_token=token_text(llama, llama.token_bos()),
        eos_token=token_text(llama, llama.token_eos()),
    )


def ftype_name(model: Any) -> str:
    """llama.cpp's ``llama_ftype_name`` of the model, as llama-server reports it: the last part
    of ``llama_model_desc`` ("<arch> <size> <ftype>"), the one public function that writes it
    in the llama.cpp llama-cpp-python bundles."""
    buffer = ctypes.create_string_buffer(256)
    n = llama_low.llama_model_desc(model, buffer, ctypes.sizeof(buffer))
    desc = buffer.value[:max(n, 0)].decode("utf-8", errors="replace")
    return desc.split(" ", 2)[2] if desc.count(" ") >= 2 else ""


def token_text(llama: llama_cpp.Llama, token: int) -> str:
    return token_bytes(llama, token).decode("utf-8", errors="replace")


def token_bytes(llama: llama_cpp.Llama, token: int, special: bool = True) -> bytes:
    if token < 0:
        return b""
    # LlamaModel.detokenize of one token is its piece, without the leading-space trim that
    # Llama.detokenize applies after a BOS.
    piece: bytes = llama._model.detokenize([token], special=special)
    return piece
