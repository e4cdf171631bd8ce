"""What each generation did, measured: llama-server's ``timings`` and token counts.

Every route generates through ``Llama.generate`` (llama-cpp-python's completions call it, and so
does ``/completion``). ``recorded`` replaces it on the instance with a wrapper that notes the
prompt, how much of it the KV cache already held, when prompt processing started, when the first
token came out and how many tokens were generated, the figures llama-server reports: ``prompt_ms``
runs from the start to the first token, ``predicted_ms`` from the first token to the last (as
``t_start_generation`` divides them there). The model serves one request at a time, so the last
generation is the one the route that just ran asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp


@dataclass(slots=True)
class Generation:
    prompt: list[int]
    cached: int  # prompt tokens the KV cache held already (not evaluated again)
    started: float
    first: float = 0.0  # when the first token came out (0: none yet)
    last: float = 0.0
    predicted: int = 0

    @property
    def evaluated(self) -> int:
        return len(self.prompt) - self.cached

    def timings(self) -> dict[str, Any]:
        """llama-server's ``timings`` object."""
        prompt_ms = ((self.first or self.started) - self.started) * 1000.0
        predicted_ms = (self.last - self.first) * 1000.0 if self.predicted else 0.0
        prompt_n, predicted_n = self.evaluated, self.predicted
        return {
            "cache_n": self.cached,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": prompt_n / prompt_ms * 1000.0 if prompt_ms > 0 else 0.0,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
            "predicted_per_second": (predicted_n / predicted_ms * 1000.0
                                     if predicted_ms > 0 else 0.0),
        }

    def usage(self) -> dict[str, Any]:
        """OpenAI's ``usage`` with llama-server's ``prompt_tokens_details``; every generated token
        counts, the end-of-generation one too (llama-server's ``n_decoded``)."""
        return {"completion_tokens": self.predicted, "prompt_tokens": len(self.prompt),
                "total_tokens": self.predicted + len(self.prompt),
                "prompt_tokens_details": {"cached_tokens": self.cached}}


def nothing_done() -> dict[str, Any]:
    """The ``timings`` of a request that generated nothing (``n_predict: 0``)."""
    return {key: 0 if key.endswith("_n") else 0.0 for key in (
        "cache_n", "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
        "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second")}


def _cached_prefix(llama: llama_cpp.Llama, tokens: Sequence[int]) -> int:
    """The prompt tokens ``Llama.generate`` will keep from the KV cache rather than evaluate:
    the common prefix with what the cache holds, less one when that is the whole prompt (it
    evaluates the last one again for fresh logits)."""
    held = llama._input_ids
    n = 0
    for a, b in zip(held, tokens):
        if a != b:
            break
        n += 1
    return n - 1 if n and n == len(tokens) else n


class GenerationRecorder:
    """``Llama.generate`` with each call recorded in ``last``, and handed to ``on_done`` once
    it has ended (``/metrics`` adds it to its totals)."""

    def __init__(self, llama: llama_cpp.Llama,
                 on_done: Callable[[Generation], None] | None = None) -> None:
        self._generate = llama.generate
        self._llama = llama
        self.last: Generation | None = None
        self.on_done = on_done

    def __call__(self, tokens: Sequence[int], *args: Any,
                 **kwargs: Any) -> Generator[int, Sequence[int] | None, None]:
        tokens = list(tokens)
        reset = kwargs.get("reset", args[6] if len(args) > 6 else True)
        cached = _cached_prefix(self._llama, tokens) if reset and self._llama.n_tokens else 0
        record = self.last = Generation(tokens, cached, time.perf_counter())
        inner = self._generate(tokens, *args, **kwargs)
        try:
            for token in inner:
                now = time.perf_counter()
                if not record.predicted:
                    record.first = now
                record.last = now
                record.predicted += 1
                yield token
        finally:
            inner.close()
            if self.on_done is not None:
                self.on_done(record)


def recorded(llama: llama_cpp.Llama,
             on_done: Callable[[Generation], None] | None = None) -> llama_cpp.Llama:
    """``llama``, its generations recorded (``last_generation``) and each handed to ``on_done``
    when it ends; returned for chaining."""
    llama.generate = GenerationRecorder(llama, on_done)  # type: ignore[method-assign]
    return llama


def last_generation(llama: llama_cpp.Llama) -> Generation | None:
    recorder = llama.generate
    return recorder.last if isinstance(recorder, GenerationRecorder) else None
