"""Loading and freeing the weights, and the facts about a model that outlive them.

``load_llama`` builds a ``llama_cpp.Llama`` and reports load progress. llama.cpp reports progress
through ``llama_model_params.progress_callback``, but ``Llama.__init__`` builds its params from
``llama_model_default_params()`` and loads from them in the same call, with no way to pass a
callback in. So for the duration of our own load (one at a time, under a lock) that factory is
wrapped to add the callback. The callback's return value is llama.cpp's abort switch: returning
False stops a load, which is how an exit request interrupts a model still loading.

``ModelFacts`` keeps what ``/v1/models`` and ``/props`` report, read once after the first load, so
those endpoints still answer while the model sleeps (llama-server does the same: ``/health`` and
``/props`` must not wake it).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_low

from refimpl.child.cli import ChildOptions

log = logging.getLogger("refimpl.child")

GGUF_MAGIC = b"GGUF"

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
    chat_template: str
    bos_token: str
    eos_token: str

    def meta(self) -> dict[str, Any]:
        """The ``meta`` object of a llama-server ``/v1/models`` entry."""
        return {"vocab_type": self.vocab_type, "n_vocab": self.n_vocab,
                "n_ctx_train": self.n_ctx_train, "n_embd": self.n_embd,
                "n_params": self.n_params, "size": self.size}


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
    try:
        with open(options.model, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise LoadFailed(f"cannot open model file {options.model}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise LoadFailed(f"{options.model} is not a GGUF file (starts with {magic!r}, "
                         f"expected {GGUF_MAGIC!r})")


def load_llama(options: ChildOptions, on_progress: ProgressFn,
               aborted: Callable[[], bool]) -> llama_cpp.Llama:
    """Load the model; blocking, meant for a worker thread. Raises LoadFailed or LoadAborted."""
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
    try:
        with _progress_reported(on_progress):
            return llama_cpp.Llama(**kwargs)
    except Exception as exc:
        if aborted():
            raise LoadAborted() from None
        raise LoadFailed(f"llama.cpp could not load {options.model}: {exc}") from None


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
        chat_template=llama.metadata.get("tokenizer.chat_template", ""),
        bos_token=token_text(llama, llama.token_bos()),
        eos_token=token_text(llama, llama.token_eos()),
    )


def token_text(llama: llama_cpp.Llama, token: int) -> str:
    return token_bytes(llama, token).decode("utf-8", errors="replace")


def token_bytes(llama: llama_cpp.Llama, token: int, special: bool = True) -> bytes:
    if token < 0:
        return b""
    # LlamaModel.detokenize of one token is its piece, without the leading-space trim that
    # Llama.detokenize applies after a BOS.
    piece: bytes = llama._model.detokenize([token], special=special)
    return piece
