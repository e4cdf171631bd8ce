"""``POST /v1/chat/completions`` and ``POST /v1/completions`` on Starlette alone.

They do what llama-cpp-python's server routes do (``llama_cpp.server.app``: the request model's
fields handed to ``Llama.create_chat_completion`` / ``Llama.__call__``, ``logit_bias``, ``grammar``
and ``min_tokens`` prepared the same way, the answer checked against its response type, a stream
as ``data: {...}`` events and ``data: [DONE]``, a context overflow as its OpenAI-style 400), but
without importing that module: it imports FastAPI, which builds the OpenAPI models of every
route at import, most of a child's start-up (0.9 s of 1.2 s on a busy two-core machine). The
request models (``llama_cpp.server.types``) are reused; they need only pydantic.

Bodies reach these handlers checked and completed by ``ChildGate`` (``app.py``).

The answers are llama-cpp-python's, reshaped into llama-server's (server-task.cpp,
``to_json_oaicompat*``): its key order, ``system_fingerprint`` (the build), ``usage`` with
``prompt_tokens_details``, the measured ``timings`` (``timings.py``) in the answer and in a
stream's last chunk (with ``usage`` there too for ``/v1/completions``), and a chat choice's
``logprobs`` only when there are some.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Union

import anyio
import llama_cpp
from llama_cpp.llama_grammar import LlamaGrammar
from llama_cpp.llama_types import CreateChatCompletionResponse, CreateCompletionResponse
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import TypeAdapter
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from refimpl.child import settings, timings
from refimpl.child.completion import holding_the_end
from refimpl.child.slots import Slots

log = logging.getLogger("refimpl.child")

# The request fields llama-cpp-python's routes do not pass on to the model.
_CHAT_EXCLUDE = {"n", "logit_bias_type", "user", "min_tokens"}
_COMPLETION_EXCLUDE = {"n", "best_of", "logit_bias_type", "user", "min_tokens"}
_CONTEXT = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")
# sse_starlette's headers, which clients of llama-cpp-python's server saw
SSE_HEADERS = {"Cache-Control": "no-store", "Connection": "keep-alive",
               "X-Accel-Buffering": "no"}
SSE_MEDIA_TYPE = "text/event-stream; charset=utf-8"
IGNORE_EOS = "ignore_eos"

Body = Union[CreateChatCompletionRequest, CreateCompletionRequest]


class OneAtATime:
    """The model, held by one request at a time (llama-cpp-python serves one at a time too)."""

    def __init__(self) -> None:
        self.lock = anyio.Lock()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        async with self.lock:
            yield


def _prepared(body: Body, llama: llama_cpp.Llama, kwargs: dict[str, Any]) -> None:
    """``prepare_request_resources`` of llama_cpp.server.app, on ``kwargs`` in place; and
    llama-server's ``ignore_eos`` (the end-of-generation token is never sampled), which
    llama-cpp-python's request models do not have (``IGNORE_EOS``, taken from the raw body)."""
    if kwargs.pop(IGNORE_EOS, False) is True:
        kwargs["logits_processor"] = holding_the_end(llama)
    if body.logit_bias is not None:
        kwargs["logit_bias"] = (_bias_by_text(llama, body.logit_bias)
                                if body.logit_bias_type == "tokens" else body.logit_bias)
    if body.grammar is not None:
        kwargs["grammar"] = LlamaGrammar.from_string(body.grammar)
    if body.min_tokens > 0:
        minimum = holding_the_end(llama, body.min_tokens)
        if kwargs.get("logits_processor") is None:
            kwargs["logits_processor"] = minimum
        else:
            kwargs["logits_processor"].extend(minimum)


def _with_ignore_eos(kwargs: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """``kwargs`` with the body's ``ignore_eos`` when it is ``true`` (checked JSON: the body
    was validated already)."""
    if b'"ignore_eos"' in raw:
        value = json.loads(raw).get(IGNORE_EOS) if raw.lstrip().startswith(b"{") else None
        if value is True:
            kwargs[IGNORE_EOS] = True
    return kwargs


def _bias_by_text(llama: llama_cpp.Llama, bias: dict[str, float]) -> dict[str, float]:
    """``logit_bias_type: "tokens"``: each key is text, biasing every token it tokenizes to."""
    out: dict[str, float] = {}
    for text, score in bias.items():
        for token in llama.tokenize(text.encode("utf-8"), add_bos=False, special=True):
            out[str(token)] = score
    return out


def _overflow(body: Body, error: Exception) -> JSONResponse | None:
    """llama-cpp-python's OpenAI-style answer to a prompt longer than the context."""
    match = _CONTEXT.search(str(error))
    if match is None:
        return None
    window, prompt = int(match[2]), int(match[1])
    completion = body.max_tokens
    if isinstance(body, CreateChatCompletionRequest):
        text = ("This model's maximum context length is {} tokens. However, you requested {} "
                "tokens ({} in the messages, {} in the completion). Please reduce the length "
                "of the messages or completion.")
    else:
        text = ("This model's maximum context length is {} tokens, however you requested {} "
                "tokens ({} in your prompt; {} for the completion). Please reduce your "
                "prompt; or completion length.")
    return JSONResponse({"error": {
        "message": text.format(window, (completion or 0) + prompt, prompt, completion),
        "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}}, status_code=400)


def _server_error(error: Exception) -> JSONResponse:
    log.exception("request failed: %s", error)
    return JSONResponse({"error": {"message": str(error), "type": "internal_server_error",
                                   "param": None, "code": None}}, status_code=500)


def _choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A choice in llama-server's key order."""
    if "text" in choice:  # a completion's: the same keys as llama-server's
        return {"text": choice["text"], "index": choice.get("index", 0),
                "logprobs": choice.get("logprobs"), "finish_reason": choice.get("finish_reason")}
    out: dict[str, Any] = {"finish_reason": choice.get("finish_reason"),
                           "index": choice.get("index", 0)}
    message = choice.get("message")
    if isinstance(message, dict):
        out["message"] = {"role": message.get("role", "assistant"),
                          "content": message.get("content"),
                          **{k: v for k, v in message.items()
                             if k not in ("role", "content") and v is not None}}
    if "delta" in choice:
        out["delta"] = choice["delta"]
    if choice.get("logprobs") is not None:
        out["logprobs"] = choice["logprobs"]
    return out


def _text_of(answer: dict[str, Any]) -> str:
    out = []
    for choice in answer.get("choices", ()):
        part = choice.get("text")
        if part is None:
            part = (choice.get("message") or choice.get("delta") or {}).get("content")
        out.append(part or "")
    return "".join(out)


class _Reshaper:
    """One request's answers (or chunks) in llama-server's shape."""

    def __init__(self, fingerprint: str, llama: llama_cpp.Llama) -> None:
        self.fingerprint = fingerprint
        self.llama = llama
        self.before = timings.last_generation(llama)
        self.text: list[str] = []

    def record(self) -> timings.Generation | None:
        record = timings.last_generation(self.llama)
        return None if record is self.before else record

    def _measured(self, answer: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        record = self.record()
        if record is not None:
            return record.usage(), record.timings()
        usage = dict(answer.get("usage") or {"completion_tokens": 0, "prompt_tokens": 0,
                                              "total_tokens": 0})
        return ({"completion_tokens": usage.get("completion_tokens", 0),
                 "prompt_tokens": usage.get("prompt_tokens", 0),
                 "total_tokens": usage.get("total_tokens", 0),
                 "prompt_tokens_details": {"cached_tokens": 0}}, timings.nothing_done())

    def answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.text.append(_text_of(answer))
        usage, timing = self._measured(answer)
        return {"choices": [_choice(c) for c in answer.get("choices", ())],
                "created": answer.get("created"), "model": answer.get("model"),
                "system_fingerprint": self.fingerprint, "object": answer.get("object"),
                "usage": usage, "id": answer.get("id"), "timings": timing}

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        self.text.append(_text_of(chunk))
        choices = [_choice(c) for c in chunk.get("choices", ())]
        last = any(c.get("finish_reason") is not None for c in choices)
        head = {"choices": choices, "created": chunk.get("created")}
        if chunk.get("object") == "chat.completion.chunk":
            out = {**head, "id": chunk.get("id"), "model": chunk.get("model"),
                   "system_fingerprint": self.fingerprint, "object": chunk.get("object")}
            if last:
                out["timings"] = self._measured(chunk)[1]
            return out
        out = {**head, "model": chunk.get("model"), "system_fingerprint": self.fingerprint,
               "object": chunk.get("object")}
        if last:
            usage, timing = self._measured(chunk)
            return {**out, "usage": usage, "id": chunk.get("id"), "timings": timing}
        return {**out, "id": chunk.get("id")}


class OpenAIRoutes:
    """The two handlers, over whatever model ``current`` hands out now."""

    def __init__(self, current: Callable[[], llama_cpp.Llama], model: OneAtATime,
                 fingerprint: str, slots: Slots) -> None:
        self.current = current
        self.model = model
        self.fingerprint = fingerprint
        self.slots = slots
        self._chat_answer: TypeAdapter[Any] | None = None
        self._completion_answer: TypeAdapter[Any] | None = None

    async def chat(self, request: Request) -> Response:
        raw = await request.body()
        body = CreateChatCompletionRequest.model_validate_json(raw)
        if self._chat_answer is None:
            self._chat_answer = TypeAdapter(Union[CreateChatCompletionResponse, str])
        return await self._answer(body, _with_ignore_eos(body.model_dump(exclude=_CHAT_EXCLUDE),
                                                         raw),
                                  llama_cpp.Llama.create_chat_completion, self._chat_answer)

    async def completion(self, request: Request) -> Response:
        raw = await request.body()
        body = CreateCompletionRequest.model_validate_json(raw)
        if isinstance(body.prompt, list):
            assert len(body.prompt) <= 1  # as llama-cpp-python's route: one prompt at most
            body.prompt = body.prompt[0] if body.prompt else ""
        if self._completion_answer is None:
            self._completion_answer = TypeAdapter(Union[CreateCompletionResponse, str])
        return await self._answer(body, _with_ignore_eos(
            body.model_dump(exclude=_COMPLETION_EXCLUDE), raw),
                                  llama_cpp.Llama.__call__, self._completion_answer)

    async def _answer(self, body: Body, kwargs: dict[str, Any],
                      call: Callable[..., Any], answer: TypeAdapter[Any]) -> Response:
        if kwargs.get("stream", False):
            return StreamingResponse(self._events(body, kwargs, call),
                                     media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
        async with self.model.held():
            llama = self.current()
            reshaper = _Reshaper(self.fingerprint, llama)
            in_effect = self._settings(llama, kwargs)
            try:
                _prepared(body, llama, kwargs)
                result = await run_in_threadpool(call, llama, **kwargs)
            except Exception as exc:  # noqa: BLE001 - answered as llama-cpp-python answers it
                return _overflow(body, exc) or _server_error(exc)
            # checked and serialized against the response type, as FastAPI did for that route
            reply = reshaper.answer(answer.dump_python(answer.validate_python(result),
                                                       mode="json"))
            self.slots.served(reshaper.record(), in_effect, "".join(reshaper.text))
        return JSONResponse(reply)

    async def _events(self, body: Body, kwargs: dict[str, Any],
                      call: Callable[..., Any]) -> AsyncIterator[bytes]:
        async with self.model.held():
            llama = self.current()
            reshaper = _Reshaper(self.fingerprint, llama)
            in_effect = self._settings(llama, kwargs)
            _prepared(body, llama, kwargs)
            chunks: Iterator[Any] = await run_in_threadpool(call, llama, **kwargs)
            async for chunk in iterate_in_threadpool(chunks):
                yield b"data: " + json.dumps(reshaper.chunk(chunk)).encode() + b"\n\n"
            self.slots.served(reshaper.record(), in_effect, "".join(reshaper.text))
            yield b"data: [DONE]\n\n"

    @staticmethod
    def _settings(llama: llama_cpp.Llama, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The settings in effect, as ``/slots`` reports them (before ``_prepared`` takes
        ``ignore_eos`` out and compiles the grammar)."""
        return settings.generation_settings(
            settings.from_openai(kwargs, llama.last_n_tokens_size), full=False)
