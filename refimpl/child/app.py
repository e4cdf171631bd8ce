"""The child's HTTP API, on Starlette: the OpenAI routes and llama-server's own endpoints.

``POST /v1/chat/completions`` and ``POST /v1/completions`` do what llama-cpp-python's server
routes do (``openai.py``), with its request models (``CreateChatCompletionRequest``,
``CreateCompletionRequest``) to validate bodies up front; its server module itself is not
imported: it brings FastAPI, most of a cold start.

Not reused from ``llama_cpp.server``, and why:

* ``LlamaProxy``/``create_app``: they load the model when constructed and keep it forever; this
  child loads after it is listening, reports progress, and frees and reloads the weights when it
  sleeps. The routes take whatever is loaded now.
* its ``/v1/models`` (``owned_by: "me"``, no ``created``/``meta``), its ``/extras/*`` tokenizer
  routes (llama-server's are ``/tokenize`` and ``/detokenize`` with other field names), and the
  whole ``Settings`` machinery.
* its error handling for malformed bodies: invalid JSON makes its handler fail a second time and
  answer 500, and a validation error becomes a 500. ``ChildGate`` checks bodies first and answers
  400 with llama-server's error shape ``{"error": {"code", "message", "type"}}``.

``ChildGate`` (pure ASGI, so streamed responses pass through untouched) also keeps the sleep
bookkeeping: a request that needs the model counts as in flight from its first byte and wakes a
sleeping model; ``/health``, ``/props`` and ``/v1/models`` never wake it (as in llama-server).
"""

from __future__ import annotations

import hmac
import json
import os
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import llama_cpp
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from refimpl import flags
from refimpl.child import completion, settings, timings
from refimpl.child.openai import OneAtATime, OpenAIRoutes
from refimpl.child.model import N_UBATCH, token_bytes
from refimpl.child.slots import Slots
from refimpl.child.runtime import ChildRuntime, ChildState, NotServing


BUILD_INFO = flags.BUILD_INFO  # llama-server's "b<build>-<commit>" form

# llama-server's error types by status code.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                405: "invalid_request_error", 413: "invalid_request_error",
                500: "server_error", 501: "not_supported_error", 503: "unavailable_error"}

_REUSED_PATHS = ("/v1/chat/completions", "/v1/completions")
# Other spellings llama-server accepts for the same endpoints.
_PATH_ALIASES = {"/chat/completions": "/v1/chat/completions", "/completions": "/completion",
                 "/v1/health": "/health", "/models": "/v1/models"}
# POSTs to these need the weights: they wake a sleeping model and keep it awake.
_MODEL_PATHS = frozenset({*_REUSED_PATHS, "/completion", "/tokenize", "/detokenize"})
_EMBEDDING_PATHS = ("/embedding", "/embeddings", "/v1/embeddings")
# The reused OpenAI routes: their request model and the field a request cannot do without.
_OPENAI_BODIES: dict[str, tuple[type[BaseModel], str]] = {
    "/v1/chat/completions": (CreateChatCompletionRequest, "messages"),
    "/v1/completions": (CreateCompletionRequest, "prompt"),
}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message,
                                   "type": _ERROR_TYPES.get(status, "server_error")}},
                        status_code=status)


def not_found() -> JSONResponse:
    """llama-server's answer to a path it does not serve (its own key order, server-http.cpp)."""
    return JSONResponse({"error": {"message": "File Not Found", "type": "not_found_error",
                                   "code": 404}}, status_code=404)


def _media_marker() -> str:
    """llama-server's marker for a media item in a prompt (server-common.cpp): random per
    process unless ``LLAMA_MEDIA_MARKER`` pins it. Reported only: this child takes no media."""
    pinned = os.environ.get("LLAMA_MEDIA_MARKER")
    if pinned:
        return pinned
    alphabet = string.ascii_letters + string.digits
    return "<__media_" + "".join(alphabet[b % len(alphabet)] for b in os.urandom(32)) + "__>"


def _template_caps(template: str) -> dict[str, bool]:
    """``chat_template_caps``. llama.cpp finds them by rendering probe conversations with its
    own Jinja engine, which this child does not have; they are read here from the template's
    text, for the capabilities a plain template has or names outright."""
    return {
        "supports_object_arguments": False,
        "supports_parallel_tool_calls": False,
        "supports_preserve_reasoning": False,
        "supports_reasoning_effort": "reasoning_effort" in template,
        "supports_string_content": True,
        "supports_system_role": True,
        "supports_tool_calls": "tool_calls" in template,
        "supports_tools": "tools" in template,
        "supports_typed_content": False,
    }


def _not_enabled(message: str) -> Handler:
    """An endpoint llama-server serves only when a flag turns it on (``--metrics``,
    ``--embeddings``) or until one turns it off (``--no-slots``): its 501 while it is off."""
    async def route(_request: Request) -> Response:
        return error_response(501, message)
    return route


def _describe(errors: list[Any]) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: "
                     f"{e.get('msg', 'invalid')}" for e in errors) or "invalid request"


# -- request bodies --------------------------------------------------------------------------------


class _BadRequest(Exception):
    pass


def _parse_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise _BadRequest("the request body is empty; expected a JSON object")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _BadRequest("the request body must be a JSON object")
    return obj


def _prepare_openai(path: str, obj: dict[str, Any], runtime: ChildRuntime) -> dict[str, Any]:
    """Check an OpenAI request before the reused route sees it, and fill in this child's defaults.

    The reused request models default ``temperature`` to 0.8 and ``seed`` to "whatever the last
    request set"; llama-server takes both from its command line (``--temp``, ``--seed``,
    ``-n``), which the router passes down to every child.
    """
    model, required = _OPENAI_BODIES[path]
    value = obj.get(required)
    if value is None or (isinstance(value, list) and not value):
        raise _BadRequest(f"'{required}' is required")
    options = runtime.options
    obj = dict(obj)
    if "max_tokens" not in obj and "max_completion_tokens" in obj:
        obj["max_tokens"] = obj.pop("max_completion_tokens")
    obj.setdefault("model", options.alias)
    obj.setdefault("temperature", options.temp)
    obj.setdefault("seed", llama_cpp.LLAMA_DEFAULT_SEED if options.seed < 0 else options.seed)
    if options.n_predict >= 0:
        obj.setdefault("max_tokens", options.n_predict)
    try:
        model.model_validate(obj)
    except ValidationError as exc:
        raise _BadRequest(_describe(list(exc.errors()))) from None
    return obj


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: disconnect notices

    return replay


def _as_json(scope: Scope, body: bytes) -> Scope:
    """The scope for ``body``, declared as JSON: llama-server reads the body as JSON whatever the
    client's content type says (``curl -d`` sends a form type), and FastAPI would not."""
    headers = [(k, v) for k, v in scope["headers"]
               if k.lower() not in (b"content-length", b"content-type")]
    headers += [(b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json")]
    return dict(scope, headers=headers)


# What llama-server answers without its key (tools/server: public_endpoints)
_PUBLIC_PATHS = {"/health", "/v1/health", "/v1/models"}


def _bearer_is(scope: Scope, key: str) -> bool:
    given = b""
    for name, value in scope.get("headers", []):
        if name == b"authorization" and value.startswith(b"Bearer "):
            given = value[len(b"Bearer "):]
    return hmac.compare_digest(given, key.encode())  # constant time


class ChildGate:
    """ASGI middleware: path aliases, body checks, the loading gate and wake-on-request."""

    def __init__(self, app: ASGIApp, runtime: ChildRuntime) -> None:
        self.app = app
        self.runtime = runtime
        # off, the embedding paths answer 501 before reading a body, as llama-server's do
        self.model_paths = _MODEL_PATHS | (
            frozenset(_EMBEDDING_PATHS) if runtime.options.embeddings else frozenset())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        path = _PATH_ALIASES.get(path, path)
        if path != scope["path"]:
            scope = dict(scope, path=path, raw_path=path.encode())
        runtime = self.runtime
        key = runtime.options.api_key
        if key is not None and path not in _PUBLIC_PATHS and not _bearer_is(scope, key):
            return await error_response(401, "Invalid API Key")(scope, receive, send)
        if runtime.state is ChildState.LOADING:
            return await error_response(503, "Loading model")(scope, receive, send)
        if runtime.state is ChildState.FAILED:  # on its way out
            return await error_response(503, "the model is not available")(scope, receive, send)
        if path not in self.model_paths or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        runtime.request_started()  # before any await: the idle timer must see this request
        try:
            try:
                body = await _read_body(receive)
            except ConnectionAbortedError:
                return
            try:
                obj = _parse_object(body)
                if path in _OPENAI_BODIES:
                    body = json.dumps(_prepare_openai(path, obj, runtime)).encode()
            except _BadRequest as exc:  # answered without waking the model
                return await error_response(400, str(exc))(scope, receive, send)
            scope = _as_json(scope, body)
            receive = _replaying(body, receive)
            try:
                await runtime.ensure_awake()
            except NotServing as exc:
                return await error_response(exc.status, exc.message)(scope, receive, send)
            await self.app(scope, receive, send)
        finally:
            runtime.request_ended()


# -- llama-server's own endpoints ------------------------------------------------------------------


class NativeCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str | list[int]
    n_predict: int | None = None
    stream: bool = False
    n_probs: int = Field(default=0, ge=0)
    temperature: float | None = None
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = Field(default=0, ge=0, le=2)
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    ignore_eos: bool = False
    seed: int | None = None
    stop: list[str] | str | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    tokens: list[int]


def _loaded(runtime: ChildRuntime) -> llama_cpp.Llama:
    """The model loaded now (the model named in a request is ignored, as llama-server does: a
    child serves one model)."""
    llama = runtime.llama
    if llama is None:  # ChildGate woke it; only a failed reload gets here
        raise HTTPException(status_code=503, detail="the model is not loaded")
    return llama


_Body = TypeVar("_Body", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


def _json(handler: Callable[[], Awaitable[Any]]) -> Handler:
    """A GET route whose answer is JSON."""
    async def route(_request: Request) -> Response:
        return JSONResponse(await handler())
    return route


def _with_body(model: type[_Body], handler: Callable[[_Body], Awaitable[Any]]) -> Handler:
    """A POST route whose body is ``model`` (400 naming the field when it is not) and whose
    answer is JSON unless it is a response already."""
    async def route(request: Request) -> Response:
        try:
            body = model.model_validate_json(await request.body())
        except ValidationError as exc:
            return error_response(400, _describe(list(exc.errors())))
        answer = await handler(body)
        return answer if isinstance(answer, Response) else JSONResponse(answer)
    return route


def _embedding_route(runtime: ChildRuntime, model: OneAtATime) -> Handler:
    """``POST /embedding`` and its spellings (``--embeddings``; imported only then)."""
    from refimpl.child import embeddings

    options = runtime.options

    async def embed(request: Request) -> Response:
        llama = _loaded(runtime)
        body = _parse_object(await request.body())  # ChildGate has checked it is one
        n_ubatch = min(options.batch_size, N_UBATCH)
        try:
            ask = embeddings.parse(body, request.url.path == "/v1/embeddings",
                                   llama._ctx.pooling_type() != embeddings.NONE_POOLING)
            prompts = [embeddings.tokenize(llama, p) for p in ask.prompts]
            for tokens in prompts:
                embeddings.check_fits(tokens, n_ubatch, llama.n_ctx())
        except embeddings.EmbeddingError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

        def run() -> list[tuple[list[list[float]], int]]:
            out = []
            for tokens in prompts:
                started = time.perf_counter()
                out.append((embeddings.embed(llama, tokens, ask.normalize), len(tokens)))
                if runtime.metrics is not None:
                    runtime.metrics.embedded(len(tokens), time.perf_counter() - started)
            return out

        async with model.held():
            results = await run_in_threadpool(run)
        return JSONResponse(embeddings.answer(ask, results, options.alias))

    return embed


def _native_routes(runtime: ChildRuntime, model: OneAtATime, slots: Slots) -> list[Route]:
    options = runtime.options
    media_marker = _media_marker()

    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def models() -> dict[str, Any]:
        # the first list is Ollama's form; llama-server fills it with these same placeholders
        # (server-context.cpp, get_res_models)
        return {"models": [{
            "name": options.alias, "model": options.alias, "modified_at": "", "size": "",
            "digest": "", "type": "model", "description": "", "tags": [""],
            "capabilities": ["completion"], "parameters": "",
            "details": {"parent_model": "", "format": "gguf", "family": "", "families": [""],
                        "parameter_size": "", "quantization_level": ""}}],
            "object": "list", "data": [runtime.models_entry()]}

    def defaults() -> dict[str, Any]:
        """The generation settings a request that sets nothing gets (the command line's)."""
        return settings.generation_settings({
            "seed": llama_cpp.LLAMA_DEFAULT_SEED if options.seed < 0 else options.seed,
            "temperature": options.temp, "n_predict": options.n_predict,
            # llama-cpp-python's Llama default, which this child does not change
            "repeat_last_n": settings.DEFAULTS["repeat_last_n"]}, full=False)

    async def props() -> dict[str, Any]:
        facts = runtime.facts
        assert facts is not None  # ChildGate answers 503 until the first load is done
        return {
            "default_generation_settings": {"params": defaults(), "n_ctx": facts.n_ctx},
            "total_slots": options.parallel,
            "model_alias": options.alias,
            "model_ftype": facts.ftype,
            "model_path": str(options.model),
            # the projector is recorded, not used: no media in
            "modalities": {"vision": options.mmproj is not None, "video": False,
                           "audio": False},
            "media_marker": media_marker,
            "endpoint_slots": options.slots,
            "endpoint_props": False,  # no POST /props
            "endpoint_metrics": options.metrics,
            "ui": False,  # no web UI here
            "ui_settings": {},
            "chat_template": facts.chat_template,
            "chat_template_caps": _template_caps(facts.chat_template),
            "bos_token": facts.bos_token,
            "eos_token": facts.eos_token,
            "build_info": BUILD_INFO,
            "is_sleeping": runtime.state is ChildState.SLEEPING,
            "cors_proxy_enabled": False,  # no CORS proxy
        }

    async def slot_list() -> list[dict[str, Any]]:
        facts = runtime.facts
        assert facts is not None
        return slots.describe(options.parallel, facts.n_ctx, model.lock.locked())

    embed = _embedding_route(runtime, model) if options.embeddings else _not_enabled(
        "This server does not support embeddings. Start it with `--embeddings`")

    async def metrics(_request: Request) -> Response:
        assert runtime.metrics is not None  # the route exists with --metrics only
        waiting = model.lock.statistics()
        text = runtime.metrics.scrape(processing=int(waiting.locked),
                                      deferred=waiting.tasks_waiting)
        return Response(text, headers={
            "Content-Type": runtime.metrics.content_type,
            "Process-Start-Time-Unix": str(runtime.metrics.started_us)})

    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        llama = _loaded(runtime)
        tokens = llama.tokenize(body.content.encode("utf-8"), add_bos=body.add_special,
                                special=True)
        if not body.with_pieces:
            return {"tokens": tokens}
        pieces = []
        for t in tokens:
            raw = token_bytes(llama, t)
            try:
                piece: str | list[int] = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)
            pieces.append({"id": t, "piece": piece})
        return {"tokens": pieces}

    async def detokenize(body: DetokenizeRequest) -> Any:
        llama = _loaded(runtime)
        n_vocab = llama.n_vocab()
        bad = [t for t in body.tokens if not 0 <= t < n_vocab]
        if bad:  # llama.cpp aborts the process on an out-of-range id
            return error_response(400, f"token id {bad[0]} is out of range 0..{n_vocab - 1}")
        text = llama.detokenize(body.tokens, special=True).decode("utf-8", errors="replace")
        return {"content": text}

    async def complete(body: NativeCompletionRequest) -> Any:
        llama = _loaded(runtime)
        try:
            prompt = completion.tokenize_prompt(llama, body.prompt)
        except completion.PromptError as exc:
            return error_response(400, str(exc))
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        seed = options.seed if body.seed is None else body.seed
        params = completion.CompletionParams(
            prompt=prompt,
            n_predict=options.n_predict if body.n_predict is None else body.n_predict,
            temperature=options.temp if body.temperature is None else body.temperature,
            top_k=body.top_k, top_p=body.top_p, min_p=body.min_p,
            repeat_penalty=body.repeat_penalty,
            seed=llama_cpp.LLAMA_DEFAULT_SEED if seed < 0 else seed,
            stop=tuple(s for s in stop if s), n_probs=body.n_probs,
            typical_p=body.typical_p, presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty, mirostat=body.mirostat,
            mirostat_tau=body.mirostat_tau, mirostat_eta=body.mirostat_eta,
            ignore_eos=body.ignore_eos, stream=body.stream,
        )

        def served(final: dict[str, Any], text: str, before: Any) -> None:
            record = timings.last_generation(llama)  # ``before``: nothing was generated
            slots.served(None if record is before else record,
                         settings.short(final["generation_settings"]), text)

        if not body.stream:
            async with model.held():
                before = timings.last_generation(llama)
                result = await run_in_threadpool(
                    lambda: completion.collect(completion.generate(llama, params, options.alias)))
                served(result, result["content"], before)
            return result

        async def events() -> AsyncIterator[bytes]:
            async with model.held():
                before = timings.last_generation(llama)
                text = []
                async for chunk in iterate_in_threadpool(
                        completion.generate(llama, params, options.alias)):
                    text.append(chunk["content"])
                    if chunk["stop"]:
                        served(chunk, "".join(text), before)
                    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return [
        Route("/health", _json(health), methods=["GET"]),
        Route("/v1/models", _json(models), methods=["GET"]),
        Route("/props", _json(props), methods=["GET"]),
        Route("/slots", _json(slot_list) if options.slots else _not_enabled(
            "This server does not support slots endpoint. Start it with `--slots`"),
            methods=["GET"]),
        Route("/metrics", metrics if options.metrics else _not_enabled(
            "This server does not support metrics endpoint. Start it with `--metrics`"),
            methods=["GET"]),
        *(Route(path, embed, methods=["POST"]) for path in _EMBEDDING_PATHS),
        Route("/tokenize", _with_body(TokenizeRequest, tokenize), methods=["POST"]),
        Route("/detokenize", _with_body(DetokenizeRequest, detokenize), methods=["POST"]),
        Route("/completion", _with_body(NativeCompletionRequest, complete), methods=["POST"]),
    ]


# -- the app ---------------------------------------------------------------------------------------


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return not_found()
    return error_response(exc.status_code, str(exc.detail))


def build_app(runtime: ChildRuntime) -> ASGIApp:
    model = OneAtATime()
    runtime.exclusive = model.held
    slots = Slots()
    openai = OpenAIRoutes(lambda: _loaded(runtime), model, BUILD_INFO, slots)
    routes = [*_native_routes(runtime, model, slots),
              Route("/v1/chat/completions", openai.chat, methods=["POST"]),
              Route("/v1/completions", openai.completion, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return ChildGate(app, runtime)
