"""llama-server's native ``/completion``: a token loop over ``Llama.generate`` with ``n_probs``.

llama-cpp-python's ``create_completion`` cannot serve this endpoint as llama-server does: its
logprobs need ``logits_all=True`` (a logits row kept for every position of the context) and rank
them with a full sort. Here the row llama.cpp just produced for the sampled position is read from
the context once per token (``llama_get_logits_ith(ctx, -1)``) and ranked with a partial
selection (:mod:`refimpl.child.probabilities`). The chunks and the final result use llama-server's
field names (``content``, ``tokens``, ``stop``, ``stop_type``, ``tokens_predicted``,
``completion_probabilities`` with ``top_logprobs``).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from refimpl.child import settings, timings
from refimpl.child.model import token_bytes
from refimpl.child.probabilities import LogitRow


class PromptError(ValueError):
    """The request cannot be served as asked (empty prompt, prompt longer than the context)."""


@dataclass(frozen=True, slots=True)
class CompletionParams:
    prompt: list[int]
    n_predict: int  # < 0: until end of generation or the context is full
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    seed: int
    stop: tuple[str, ...]
    n_probs: int
    typical_p: float
    presence_penalty: float
    frequency_penalty: float
    mirostat: int
    mirostat_tau: float
    mirostat_eta: float
    ignore_eos: bool
    stream: bool  # every field given: the defaults are the request's (app.py)

    def settings(self, repeat_last_n: int) -> dict[str, Any]:
        """llama-server's ``generation_settings`` for these parameters."""
        return settings.generation_settings({
            "seed": self.seed, "temperature": self.temperature, "top_k": self.top_k,
            "top_p": self.top_p, "min_p": self.min_p, "typical_p": self.typical_p,
            "repeat_last_n": repeat_last_n, "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty, "mirostat": self.mirostat,
            "mirostat_tau": self.mirostat_tau, "mirostat_eta": self.mirostat_eta,
            "stop": list(self.stop), "n_predict": self.n_predict, "ignore_eos": self.ignore_eos,
            "stream": self.stream, "n_probs": self.n_probs}, full=True)


def holding_the_end(llama: llama_cpp.Llama, tokens: int = 2**62
                    ) -> llama_cpp.LogitsProcessorList:
    """Logits processors that keep the end-of-generation token from being sampled for the
    first ``tokens`` tokens (``min_tokens``); by default, never (llama-server's ``ignore_eos``)."""
    return llama_cpp.LogitsProcessorList(
        [llama_cpp.MinTokensLogitsProcessor(tokens, llama.token_eos())])


def tokenize_prompt(llama: llama_cpp.Llama, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=llama._model.add_bos_token(),
                                special=True)
    else:
        n_vocab = llama.n_vocab()
        bad = [t for t in prompt if not 0 <= t < n_vocab]
        if bad:
            raise PromptError(f"token id {bad[0]} is out of range 0..{n_vocab - 1}")
        tokens = list(prompt)
    if not tokens:
        raise PromptError("the prompt is empty")
    if len(tokens) >= llama.n_ctx():
        raise PromptError(f"the prompt has {len(tokens)} tokens; the context holds "
                          f"{llama.n_ctx()}, which must leave room for at least one more")
    return tokens


@dataclass(slots=True)
class _StopMatcher:
    """Holds back text that may be the start of a stop word, so no stop word is ever emitted."""

    words: tuple[str, ...]
    pending: str = ""
    hit: str = field(default="")

    def feed(self, text: str) -> str:
        self.pending += text
        if not self.words:
            out, self.pending = self.pending, ""
            return out
        cut = -1
        for word in self.words:
            i = self.pending.find(word)
            if i >= 0 and (cut < 0 or i < cut):
                cut, self.hit = i, word
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out
        keep = 0  # the longest tail of pending that could still grow into a stop word
        for word in self.words:
            for k in range(min(len(word) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(word[:k]):
                    keep = k
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _probability_entry(llama: llama_cpp.Llama, token: int, row: LogitRow,
                       n_probs: int) -> dict[str, Any]:
    def describe(tid: int, logprob: float) -> dict[str, Any]:
        piece = token_bytes(llama, tid)
        return {"id": tid, "token": piece.decode("utf-8", errors="replace"),
                "bytes": list(piece), "logprob": logprob}

    entry = describe(token, row.logprob(token))
    entry["top_logprobs"] = [describe(p.id, p.logprob) for p in row.top(n_probs)]
    return entry


def generate(llama: llama_cpp.Llama, params: CompletionParams,
             model: str = "") -> Iterator[dict[str, Any]]:
    """Stream chunks: one per generated token (``stop: false``), then one with ``stop: true``
    (``model`` is named in that one).

    Blocking; call it on a worker thread, with the model held exclusively.
    """
    n_ctx = llama.n_ctx()
    room = n_ctx - len(params.prompt)
    limit = room if params.n_predict < 0 else min(params.n_predict, room)
    llama.set_seed(params.seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = _StopMatcher(params.stop)
    vocab = llama._model.vocab
    n_vocab = llama.n_vocab()
    predicted = 0
    stop_type = "limit"
    text: list[str] = []
    before = timings.last_generation(llama)
    processors = holding_the_end(llama) if params.ignore_eos else None
    tokens = llama.generate(params.prompt, top_k=params.top_k, top_p=params.top_p,
                            min_p=params.min_p, typical_p=params.typical_p,
                            temp=params.temperature, repeat_penalty=params.repeat_penalty,
                            reset=True, frequency_penalty=params.frequency_penalty,
                            presence_penalty=params.presence_penalty,
                            mirostat_mode=params.mirostat, mirostat_tau=params.mirostat_tau,
                            mirostat_eta=params.mirostat_eta, logits_processor=processors)
    try:
        for token in tokens if limit > 0 else ():
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                stop_type = "eos"
                break
            predicted += 1
            chunk: dict[str, Any] = {"index": 0, "content": "", "tokens": [token], "stop": False,
                                     "id_slot": 0, "tokens_predicted": predicted,
                                     "tokens_evaluated": len(params.prompt)}
            if params.n_probs > 0:
                logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(n_vocab,))
                chunk["completion_probabilities"] = [
                    _probability_entry(llama, token, LogitRow(logits), params.n_probs)]
            chunk["content"] = stops.feed(decoder.decode(token_bytes(llama, token, special=False)))
            text.append(chunk["content"])
            yield chunk
            if stops.hit:
                stop_type = "word"
                break
            if predicted >= limit:
                break
    finally:
        tokens.close()
    tail = "" if stops.hit else stops.feed(decoder.decode(b"", final=True)) + stops.flush()
    record = timings.last_generation(llama)
    if record is before:  # nothing was asked for: the prompt was not even evaluated
        record = None
    # in llama-server's order (server-task.cpp, ``to_json_non_oaicompat_final``)
    yield {
        "index": 0, "content": tail, "tokens": [], "id_slot": 0, "stop": True, "model": model,
        "tokens_predicted": predicted, "tokens_evaluated": len(params.prompt),
        "generation_settings": params.settings(llama.last_n_tokens_size),
        # the prompt as text, special tokens written out (``<s> hello``)
        "prompt": b"".join(token_bytes(llama, t) for t in params.prompt).decode(
            "utf-8", errors="replace"),
        "has_new_line": "\n" in "".join(text) + tail,
        "truncated": stop_type == "limit" and predicted >= room,
        "stop_type": stop_type, "stopping_word": stops.hit,
        "tokens_cached": llama.n_tokens,  # the prompt and the answer, as the KV cache holds them
        "timings": timings.nothing_done() if record is None else record.timings(),
    }


def collect(chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The non-streaming answer: the final chunk, with every chunk's content and tokens joined."""
    content: list[str] = []
    tokens: list[int] = []
    probs: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    for chunk in chunks:
        content.append(chunk["content"])
        tokens.extend(chunk["tokens"])
        probs.extend(chunk.get("completion_probabilities", ()))
        final = chunk
    result = dict(final, content="".join(content), tokens=tokens)
    if probs:
        result["completion_probabilities"] = probs
    return result
