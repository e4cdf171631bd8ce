"""``POST /embedding``, ``/embeddings`` and ``/v1/embeddings`` (``--embeddings``), as llama-server.

What a body may hold and what comes back follow server-context.cpp (``handle_embeddings_impl``,
``send_embedding``) and server-common.cpp (``tokenize_input_subprompt``,
``format_embeddings_response_oaicompat``):

* ``input`` (or ``content``, which always answers in the native form) is a string, a list of
  token ids, a list mixing both, an object with ``prompt_string`` or with an OpenAI ``content``
  array, or a list of any of these but numbers (one embedding each).
* Strings are tokenized with the model's special tokens (BOS) and with special-token parsing.
* Pooled (``--pooling`` other than ``none``): one vector per input, normalized by
  ``embd_normalize`` (default 2, Euclidean). Unpooled: one vector per token, as computed, and
  ``/v1/embeddings`` refuses (OpenAI has no per-token embeddings).
* Native answer: ``[{"index", "embedding": [[...], ...]}]``; OpenAI's: ``{"model", "object",
  "usage", "data": [{"embedding", "index", "object"}]}``, base64 floats with
  ``encoding_format: "base64"``.

The embedding itself is computed here rather than by ``Llama.embed``, which takes strings only
and tokenizes them its own way. The context is created with embeddings on and turned on only for
these decodes (``llama_set_embeddings``), as llama-server does per batch.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_low

NONE_POOLING = 0  # enum llama_pooling_type: LLAMA_POOLING_TYPE_NONE
DEFAULT_NORMALIZE = 2  # common_params.embd_normalize: Euclidean

_ELEMENTS = ('"prompt" elements must be a string, a list of tokens, a JSON object containing a '
             'prompt string, or a list of mixed strings & tokens.')


class EmbeddingError(Exception):
    """A request llama-server answers with an error: its status, message and error type, and
    any fields it adds to the error object."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.extra = status, message, kind, extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message, "type": self.kind,
                          **self.extra}}


# A prompt before tokenizing: text, token ids, or both, in order.
Piece = str | int


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    prompts: tuple[tuple[Piece, ...], ...]
    oai: bool  # OpenAI's answer (``/v1/embeddings`` given ``input``)
    base64: bool
    normalize: int
    model: str | None


def _is_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _subprompt(value: Any) -> tuple[Piece, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(_is_number(v) or isinstance(v, str) for v in value):
        return tuple(value)
    if isinstance(value, dict) and "content" in value:
        content = value["content"]
        if not isinstance(content, list):
            raise EmbeddingError(400, '"content" must be an array')
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") != "text":
                raise EmbeddingError(400, f"{part.get('type')} input is not supported by "
                                          "this server: it takes no media")
        return ("".join(str(p.get("text", "")) for p in content if isinstance(p, dict)),)
    if isinstance(value, dict) and "prompt_string" in value:
        if "multimodal_data" in value:
            raise EmbeddingError(400, "Multimodal data provided, but model does not support "
                                      "multimodal requests.")
        return _subprompt(value["prompt_string"])
    raise EmbeddingError(400, _ELEMENTS)


def parse(body: dict[str, Any], oai: bool, pooled: bool) -> EmbeddingRequest:
    """The request in ``body``, for ``/v1/embeddings`` when ``oai``; EmbeddingError if
    llama-server would refuse it (in the order it checks)."""
    if oai and not pooled:
        raise EmbeddingError(400, "Pooling type 'none' is not OAI compatible. Please use a "
                                  "different pooling type")
    if "input" in body:
        prompt = body["input"]
    elif "content" in body:
        prompt, oai = body["content"], False  # "content" is not OpenAI's
    else:
        raise EmbeddingError(400, '"input" or "content" must be provided')
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise EmbeddingError(400, "The format to return the embeddings in. Can be either float "
                                  "or base64")
    if isinstance(prompt, list) and not any(_is_number(p) for p in prompt):
        prompts = tuple(_subprompt(p) for p in prompt)
    else:
        prompts = (_subprompt(prompt),)
    if not prompts:
        raise EmbeddingError(400, '"input" must not be empty')
    normalize = body.get("embd_normalize", DEFAULT_NORMALIZE)
    if not _is_number(normalize):
        raise EmbeddingError(400, '"embd_normalize" must be an integer')
    model = body.get("model")
    return EmbeddingRequest(prompts, oai, encoding == "base64", normalize,
                            model if isinstance(model, str) else None)


def tokenize(llama: llama_cpp.Llama, prompt: tuple[Piece, ...]) -> list[int]:
    """llama-server's ``tokenize_mixed``: the model's special tokens before the first text
    piece only; token ids as they are (checked against the vocabulary: llama.cpp aborts)."""
    tokens: list[int] = []
    n_vocab = llama.n_vocab()
    for i, piece in enumerate(prompt):
        if isinstance(piece, str):
            tokens += llama.tokenize(piece.encode("utf-8"), add_bos=i == 0, special=True)
        elif 0 <= piece < n_vocab:
            tokens.append(piece)
        else:
            raise EmbeddingError(400, f"token id {piece} is out of range 0..{n_vocab - 1}")
    if not tokens:
        raise EmbeddingError(400, "Input content cannot be empty")
    return tokens


def check_fits(tokens: list[int], n_ubatch: int, n_ctx: int) -> None:
    """An embedding is computed in one physical batch, within the context (llama-server's
    checks, in its order)."""
    if len(tokens) > n_ubatch:
        raise EmbeddingError(500, f"input ({len(tokens)} tokens) is too large to process. "
                                  "increase the physical batch size (current batch size: "
                                  f"{n_ubatch})", "server_error")
    if len(tokens) > n_ctx:
        raise EmbeddingError(400, f"input ({len(tokens)} tokens) is larger than the max "
                                  f"context size ({n_ctx} tokens). skipping",
                             "exceed_context_size_error", n_prompt_tokens=len(tokens),
                             n_ctx=n_ctx)


def normalized(vector: list[float], norm: int) -> list[float]:
    """common_embd_normalize: -1 none, 0 max-absolute to the int16 range, 2 Euclidean,
    other p-norms."""
    if norm == -1:
        total = 1.0
    elif norm == 0:
        total = max((abs(v) for v in vector), default=0.0) / 32760.0
    elif norm == 2:
        total = math.sqrt(sum(v * v for v in vector))
    else:
        total = sum(abs(v) ** norm for v in vector) ** (1.0 / norm)
    scale = 1.0 / total if total > 0 else 0.0
    return [v * scale for v in vector]


def embed(llama: llama_cpp.Llama, tokens: list[int], norm: int) -> list[list[float]]:
    """One prompt's embedding: a vector per token unpooled, else one pooled and normalized
    vector. Blocking; the caller holds the model. The KV cache is cleared before and after, so
    the next generation evaluates its whole prompt."""
    ctx, n_embd = llama.ctx, llama.n_embd()
    # llama-cpp-python's internals (untyped): the context and the batch Llama decodes with
    context: Any = llama._ctx
    batch: Any = llama._batch
    llama_low.llama_set_embeddings(ctx, True)
    try:
        context.kv_cache_clear()
        batch.reset()
        batch.add_sequence(tokens, 0, True)
        context.decode(batch)
        if context.pooling_type() == NONE_POOLING:
            rows = llama_low.llama_get_embeddings(ctx)
            return [rows[i * n_embd:(i + 1) * n_embd] for i in range(len(tokens))]
        return [normalized(llama_low.llama_get_embeddings_seq(ctx, 0)[:n_embd], norm)]
    finally:
        batch.reset()
        context.kv_cache_clear()
        llama.reset()  # type: ignore[no-untyped-call]
        llama_low.llama_set_embeddings(ctx, False)


def answer(request: EmbeddingRequest, results: list[tuple[list[list[float]], int]],
           model_name: str) -> Any:
    """The response body for ``results`` (each prompt's vectors and token count)."""
    if not request.oai:
        return [{"index": i, "embedding": vectors} for i, (vectors, _n) in enumerate(results)]
    data = []
    for i, (vectors, _n) in enumerate(results):
        if request.base64:
            raw = struct.pack(f"<{len(vectors[0])}f", *vectors[0])
            data.append({"embedding": base64.b64encode(raw).decode("ascii"), "index": i,
                         "object": "embedding", "encoding_format": "base64"})
        else:
            data.append({"embedding": vectors[0], "index": i, "object": "embedding"})
    n_tokens = sum(n for _vectors, n in results)
    return {"model": request.model if request.model is not None else model_name,
            "object": "list", "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            "data": data}
