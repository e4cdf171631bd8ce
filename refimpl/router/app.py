"""The router's HTTP API (ROUTER.md section 4) on Starlette, and the streaming proxy.

Starlette runs on anyio, like the driver. Every decision (where a request goes, whether a load or
unload is allowed) is the core's, asked through the driver; this module only speaks HTTP.
"""

from __future__ import annotations

import hmac
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from refimpl.cache import BadName, list_cached, remove_cached, select_files, split_name
from refimpl.core import errors
from refimpl.core.commands import Command, Publish, RemoveFiles, Reply
from refimpl.core.config import ModelSpec
from refimpl.core.events import DownloadAsked, LoadAsked, RemoveAsked, UnloadAsked

from .driver import Driver
from .options import RouterOptions
from .sources import ModelEntry, SourceError

# Hop-by-hop and per-connection headers the proxy must not copy (upstream #17698): the server in
# front writes its own, and a copy would duplicate them.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "content-length", "server", "date",
              "host", "authorization"}
BUILD_INFO = "refimpl-router 0.1.0"
SMALL_BODY = 1024 * 1024  # sized answers up to this are relayed in one piece
# A request body larger than this is refused with 413: llama-server's limit (cpp-httplib's
# payload maximum), so what one router takes the other takes too (images travel in bodies).
MAX_BODY = 100 * 1024 * 1024
# A request body that stalls this long between two pieces is refused with 408, so a client that
# never finishes its body does not hold its connection and its memory for ever.
BODY_IDLE_TIMEOUT = 60.0


MAX_MESSAGE = 300  # an error message echoes what the client sent (a name, a path): only so much


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + f"... ({len(message)} characters)"
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}},
                        status_code=status)


def reply_response(reply: Reply) -> JSONResponse:
    if reply.status == 200:
        return JSONResponse({"success": True})
    kind = "not_found_error" if reply.status == 404 else (
        "invalid_request_error" if reply.status < 500 else "server_error")
    return error(reply.status, reply.message or reply.kind, kind)


class RouterApp:
    def __init__(self, driver: Driver, entries: dict[str, ModelEntry],
                 options: RouterOptions, lifespan: Any = None,
                 load_entries: Callable[[], list[ModelEntry]] | None = None,
                 spec_for: Callable[[ModelEntry], ModelSpec] | None = None,
                 cache: Path | None = None) -> None:
        self.driver = driver
        self.cache = cache  # the hub-layout cache that downloads fill; None: no downloads
        driver.on_command = self.on_command
        self.entries = entries
        self.load_entries = load_entries or (lambda: list(entries.values()))
        self.spec_for = spec_for or (lambda e: ModelSpec(
            e.name, aliases=e.aliases, launch=(str(e.path), str(e.mmproj), *e.args())))
        self.options = options
        self.created = int(time.time())
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                                        limits=httpx.Limits(max_connections=1000))
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/models", self.list_models, methods=["GET"]),
            Route("/models", self.download, methods=["POST"]),
            Route("/models", self.remove, methods=["DELETE"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/models/load", self.load, methods=["POST"]),
            Route("/models/unload", self.unload, methods=["POST"]),
            Route("/models/sse", self.sse, methods=["GET"]),
            Route("/props", self.props, methods=["GET"]),
            Route("/{path:path}", self.proxy, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ]
        self.app = Starlette(routes=routes, lifespan=lifespan,
                             exception_handlers={HTTPException: _http_error,
                                                 Exception: _server_error})
        self.app.add_middleware(_ApiKey, key=options.api_key)

    # -- the router's own endpoints --------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def props(self, request: Request) -> Response:
        if "model" in request.query_params:
            return await self.proxy(request)
        return JSONResponse({"role": "router", "max_instances": self.options.models_max,
                             "models_autoload": self.options.models_autoload,
                             "build_info": BUILD_INFO})

    def model_info(self, name: str) -> dict[str, Any]:
        model = self.driver.core.models[name]
        entry = self.entries[name]
        status: dict[str, Any] = {"value": model.status.value, "args": entry.args()}
        if entry.source == "preset":
            status["preset"] = entry.name
        if model.failed:
            status["failed"] = True
            status["exit_code"] = model.exit_code
        own: dict[str, Any] = {
            "id": name, "aliases": list(model.spec.aliases), "tags": [], "object": "model",
            "owned_by": "llamacpp", "created": self.created, "status": status,
            "source": entry.source, "can_remove": entry.source == "cache"}
        # The child's info only adds fields, as upstream merges it: a llama-server child started
        # without --alias reports its file path in "aliases" (docs/CONFORMANCE.md, H7).
        return own | {k: v for k, v in model.info.items() if k not in own}

    async def list_models(self, request: Request) -> Response:
        if request.query_params.get("reload", "").lower() in ("1", "true"):
            try:
                reloaded = self.reload()
            except SourceError as exc:
                return error(400, f"reload failed: {exc}")
            if reloaded.status != 200:  # the previous catalog stays in force
                return error(400, f"reload failed: {reloaded.message}")
        data = [self.model_info(name) for name in self.driver.core.models
                if name in self.entries]
        return JSONResponse({"object": "list", "data": data})

    def reload(self) -> Reply:
        """Re-read the sources and hand them to the core, which decides what changes (a running
        model that changed or vanished is unloaded; a vanished one is forgotten once it is not
        running). A refused change (a name of two models) leaves the previous catalog."""
        fresh = {e.name: e for e in self.load_entries()}
        core = self.driver.core
        removed = tuple(name for name in self.entries if name not in fresh
                        and not (name in core.models and core.models[name].downloading))
        reply = self.driver.change_catalog(tuple(self.spec_for(e) for e in fresh.values()),
                                           removed)
        if reply.status == 200:
            for name in removed:
                del self.entries[name]
            self.entries.update(fresh)
            self.driver.publish("*", "models_reload", {})
        return reply

    async def _api(self, request: Request, kind: type[LoadAsked] | type[UnloadAsked]) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error(400, "\"model\" must be a non-empty string")
        return reply_response(await self.driver.call(kind, model))

    async def load(self, request: Request) -> Response:
        return await self._api(request, LoadAsked)

    async def unload(self, request: Request) -> Response:
        # Answered at once for a model child; a download is cancelled first (its child is gone
        # when the answer comes).
        return await self._api(request, UnloadAsked)

    # -- downloads and the cache -----------------------------------------------------------------

    async def download(self, request: Request) -> Response:
        """``POST /models {"model": "user/repo[:TAG]"}``: check the name against the hub, then
        start a download child and answer at once; progress goes to ``/models/sse``."""
        if self.cache is None or self.options.offline:
            return error(400, "downloads are off (--offline)")
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        try:
            repo, tag = split_name(body.get("model"))
        except BadName as exc:
            return error(400, str(exc))
        try:
            files = await anyio.to_thread.run_sync(_hub_files, repo)
        except LookupError as exc:
            return error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - the hub is down, slow or says something odd
            return error(502, f"could not ask the hub about {repo}: {type(exc).__name__}: "
                              f"{str(exc)[:300]}", "server_error")
        chosen = select_files(files, tag)
        if chosen is None:
            return error(400, f"{repo} has no GGUF model file with tag {tag}" if tag
                         else f"{repo} has no GGUF model file")
        name = f"{repo}:{chosen.tag}"
        reply = self.driver.api(DownloadAsked, name)  # the core refuses a name it has
        if reply.status != 200:
            return reply_response(reply)
        self.entries[name] = ModelEntry(name, None, "cache")
        return JSONResponse({"success": True, "model": name})

    async def remove(self, request: Request) -> Response:
        """``DELETE /models?model=``: stop it if it runs (or cancel its download), then delete
        its files. Only cache models can be removed."""
        name = request.query_params.get("model", "")
        if not name:
            return error(400, "\"model\" must be a non-empty string (?model=user/repo:TAG)")
        entry = self.entries.get(self.driver.core.resolve(name) or name)
        if entry is None:
            try:
                split_name(name)
            except BadName as exc:
                return error(400, str(exc))
            return error(404, f"model {name!r} not found", "not_found_error")
        if entry.source != "cache":
            return error(400, f"model {entry.name!r} is not removable (its source is "
                              f"{entry.source}, not the cache)")
        return reply_response(await self.driver.call(RemoveAsked, entry.name))

    def on_command(self, command: Command) -> None:
        """Keep the model table and the cache in step with what the core decided."""
        if isinstance(command, RemoveFiles) and self.cache is not None:
            try:
                remove_cached(self.cache, command.model)
            except (BadName, OSError) as exc:
                self.driver.log(f"[router] could not remove {command.model}: {exc}")
        elif isinstance(command, Publish) and command.event == "model_remove":
            self.entries.pop(command.model, None)
        elif isinstance(command, Publish) and command.event == "download_finished" \
                and self.cache is not None:
            # Known before the download child exits, so the load that follows has its file.
            for cached in list_cached(self.cache):
                if cached.name == command.model:
                    entry = ModelEntry(cached.name, cached.path, "cache", mmproj=cached.mmproj)
                    self.entries[cached.name] = entry
                    self.driver.change_catalog((self.spec_for(entry),), ())

    async def sse(self, request: Request) -> Response:
        send, receive = self.driver.subscribe()

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": subscribed\n\n"
                async with receive:
                    async for message in receive:
                        yield b"data: " + json.dumps(message).encode() + b"\n\n"
            finally:
                self.driver.unsubscribe(send)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # -- the proxy -------------------------------------------------------------------------------

    async def proxy(self, request: Request) -> Response:
        body = await read_body(request)
        if isinstance(body, Response):
            return body
        if request.method == "GET":
            model: str | None = request.query_params.get("model")
        else:
            parsed = _parse(body)
            if isinstance(parsed, Response):
                return parsed
            value = parsed.get("model")
            if value is not None and not isinstance(value, str):
                return error(400, "\"model\" must be a string")
            model = value
        autoload = _autoload(request.query_params.get("autoload"))
        req, outcome = await self.driver.route(model, autoload, request.is_disconnected)
        if outcome.reply is not None:
            reply = outcome.reply
            kind = "not_found_error" if reply.kind == errors.MODEL_NOT_FOUND else (
                "invalid_request_error" if reply.status < 500 else "server_error")
            return error(reply.status, reply.message or reply.kind, kind)
        assert outcome.forward is not None
        child = self.driver.children.get(outcome.forward.instance)
        if child is None:
            self.driver.ended(req, ok=False)
            return error(502, "the model's child process is gone", "server_error")
        query = request.url.query
        url = httpx.URL(f"http://127.0.0.1:{child.port}{request.url.path}"
                        + (f"?{query}" if query else ""))
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        try:
            upstream = await self.client.send(
                self.client.build_request(request.method, url, headers=headers, content=body),
                stream=True)
        except httpx.HTTPError as exc:
            self.driver.ended(req, ok=False)
            return error(502, f"could not reach the model's child: {exc}", "server_error")

        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
                       and not k.lower().startswith("access-control-")}
        length = upstream.headers.get("content-length", "")
        if length.isdigit() and int(length) <= SMALL_BODY:
            # A small, sized answer (not a stream): one read, one plain response, less machinery.
            ok = False
            try:
                content = await upstream.aread()
                ok = upstream.status_code < 500
            except httpx.HTTPError:
                return error(502, "the model's child broke off its answer", "server_error")
            finally:
                await upstream.aclose()
                self.driver.ended(req, ok)
            return Response(content, status_code=upstream.status_code, headers=out_headers)

        events = upstream.headers.get("content-type", "").startswith("text/event-stream")

        async def relay() -> AsyncIterator[bytes]:
            ok = False
            tail = b"\n\n"
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
                    tail = (tail + chunk)[-2:]
                ok = upstream.status_code < 500
            except httpx.HTTPError:
                if events:  # the status is sent: say in the stream why it ends here
                    yield (b"" if tail == b"\n\n" else b"\n\n") + b"data: " + json.dumps(
                        {"error": {"code": 502, "message": "the model's child broke off its "
                                   "answer", "type": "server_error"}}).encode() + b"\n\n"
            finally:
                await upstream.aclose()
                self.driver.ended(req, ok)

        return StreamingResponse(relay(), status_code=upstream.status_code, headers=out_headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (405 for a method no route takes) in the OpenAI error shape."""
    assert isinstance(exc, HTTPException)
    response = error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
    response.headers.update(exc.headers or {})
    return response


def _hub_files(repo: str) -> list[str]:
    """The file names of ``repo`` on the hub ``HF_ENDPOINT`` names; LookupError if none."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    try:
        info = HfApi().model_info(repo)
    except RepositoryNotFoundError:
        raise LookupError(f"model repo {repo!r} not found on the hub") from None
    except HFValidationError as exc:  # split_name takes what the library takes: a 400 anyway
        raise LookupError(f"model repo {repo!r} is not a hub name: {exc}") from None
    return [s.rfilename for s in info.siblings or []]


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug of the router's still answers in the OpenAI error shape (and is logged)."""
    return error(500, f"internal error of the router: {type(exc).__name__}", "server_error")


def _parse(body: bytes) -> dict[str, Any] | Response:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[...]]]]
        return error(400, "the request body is not valid JSON")
    if not isinstance(value, dict):
        return error(400, "the request body must be a JSON object")
    return value


async def _json_body(request: Request) -> dict[str, Any] | Response:
    body = await read_body(request)
    return body if isinstance(body, Response) else _parse(body)


async def read_body(request: Request, limit: int | None = None,
                    idle_timeout: float | None = None) -> bytes | Response:
    """The whole request body, or the error to answer instead: 413 past ``limit`` bytes (told by
    Content-Length before reading, or counted while reading), 408 when it stalls for
    ``idle_timeout`` seconds, 499 when the client went away."""
    limit = MAX_BODY if limit is None else limit
    idle_timeout = BODY_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
    too_big = f"the request body is larger than the limit of {limit} bytes"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return error(413, too_big)
    pieces: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    while True:
        with anyio.move_on_after(idle_timeout) as waited:
            try:
                piece = await stream.__anext__()
            except StopAsyncIteration:
                break
            except ClientDisconnect:
                return error(499, "the client closed the request")
        if waited.cancelled_caught:
            return error(408, f"the request body stalled: nothing arrived for "
                              f"{idle_timeout:g} seconds")
        size += len(piece)
        if size > limit:
            return error(413, too_big)
        pieces.append(piece)
    return b"".join(pieces)


def _autoload(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.lower() not in ("0", "false", "no", "off")


class _ApiKey:
    """With ``--api-key``, every endpoint but /health needs ``Authorization: Bearer KEY``."""

    def __init__(self, app: Any, key: str | None) -> None:
        self.app = app
        self.key = key.encode() if key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value.startswith(b"Bearer "):
                given = value[len(b"Bearer "):]
        if hmac.compare_digest(given, self.key):  # constant time
            await self.app(scope, receive, send)
            return
        response = error(401, "Invalid API Key", "authentication_error")
        await response(scope, receive, send)

