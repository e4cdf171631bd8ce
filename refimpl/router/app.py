"""The router's HTTP API (ROUTER.md section 4) on Starlette, and the streaming proxy.

Starlette runs on anyio, like the driver. Every decision (where a request goes, whether a load or
unload is allowed) is the core's, asked through the driver; this module only speaks HTTP.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from refimpl import modalities
from refimpl.cache import BadName, list_cached, remove_cached, select_files, split_name
from refimpl.core import errors
from refimpl.core.commands import Command, Forward, ModelView, Publish, RemoveFiles, Reply
from refimpl.core.config import ModelSpec
from refimpl.core.events import DownloadAsked, LoadAsked, RemoveAsked, UnloadAsked
from refimpl.flags import BUILD_INFO

from .debug import FAKE_DELAY
from .driver import Driver, Outcome
from .options import RouterOptions
from .sources import ModelEntry, SourceError, card_of, launch_of
from .upstream import Answer, Connect, Upstream, UpstreamError, tcp

# Hop-by-hop and per-connection headers the proxy must not copy (upstream #17698): the server in
# front writes its own, and a copy would duplicate them.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "content-length", "server", "date",
              "host", "authorization", "expect"}
SMALL_BODY = 1024 * 1024  # sized answers up to this are relayed in one piece
# A request body larger than this is refused with 413: llama-server's limit (cpp-httplib's
# payload maximum), so what one router takes the other takes too (images travel in bodies).
MAX_BODY = 100 * 1024 * 1024
# A request body that stalls this long between two pieces is refused with 408, so a client that
# never finishes its body does not hold its connection and its memory for ever.
BODY_IDLE_TIMEOUT = 60.0
# Bytes of request bodies held at once, all requests together (BodyBudget): room for two bodies
# at the limit and some more. With each body held once (found "model" without building the
# document, sent on in slices), the router's memory for bodies stays within about this.
BODY_BUDGET = 256 * 1024 * 1024


# The last event of a /models/sse stream whose reader fell too far behind (driver.SSE_BUFFER
# events): the stream ends after it; reconnect and read GET /models for the state now.
OVERFLOW = {"model": "*", "event": "stream_overflow",
            "data": {"message": "this subscriber fell too far behind and missed events; "
                                "reconnect and read GET /models for the current state"}}

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
    return _retry_after(error(reply.status, reply.message or reply.kind, kind), reply)


def _retry_after(response: JSONResponse, reply: Reply) -> JSONResponse:
    """The core's ``Reply.retry_after`` (a 429 of ``--queue-max``), as the header."""
    if reply.retry_after is not None:
        response.headers["Retry-After"] = str(reply.retry_after)
    return response


class RouterApp:
    def __init__(self, driver: Driver, options: RouterOptions, lifespan: Any = None,
                 load_entries: Callable[[], list[ModelEntry]] | None = None,
                 spec_for: Callable[[ModelEntry], ModelSpec] | None = None,
                 cache: Path | None = None,
                 connect: Connect | None = None,
                 blocking: Callable[..., Awaitable[Any]] | None = None,
                 hub_files: Callable[[str], list[str]] | None = None) -> None:
        self.driver = driver
        # a repo's file names on the hub, asked with --hf-token / HF_TOKEN if given
        self.hub_files = hub_files or (lambda repo: _hub_files(repo, options.hf_token))
        # How work that blocks (reading the sources, asking the hub) is kept off the event loop:
        # a worker thread; the whole-router simulation runs it inline, in virtual time.
        self.blocking = blocking or anyio.to_thread.run_sync
        self.cache = cache  # the hub-layout cache that downloads fill; None: no downloads
        driver.on_command = self.on_command
        # The model sources: read on a reload, each entry made a spec for the core, which keeps
        # the catalog (what GET /models lists comes from the core, through the driver).
        self.load_entries = load_entries or list
        self.spec_for = spec_for or (lambda e: ModelSpec(
            e.name, aliases=e.aliases, launch=launch_of(e), card=card_of(e), ttl=e.ttl,
            pin=e.pin, concurrency=e.concurrency, group=e.group))
        self.options = options
        self.created = int(time.time())
        # ``connect``: how the proxy's connections reach the children (default: TCP on
        # 127.0.0.1); the whole-router simulation gives an in-memory network (simulator/whole.py).
        self.upstream = Upstream(connect or tcp)
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
        self.app.add_middleware(_ApiKey, keys=options.api_keys)
        self.bodies = BodyBudget(BODY_BUDGET)

    # -- the router's own endpoints --------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def props(self, request: Request) -> Response:
        if "model" in request.query_params:
            return await self.proxy(request)
        return JSONResponse({"role": "router", "max_instances": self.options.models_max,
                             "models_autoload": self.options.models_autoload,
                             "build_info": BUILD_INFO})

    def model_info(self, view: ModelView) -> dict[str, Any]:
        card = view.card
        status: dict[str, Any] = {"value": view.status, "args": list(card.args)}
        if card.source == "preset":
            status["preset"] = view.name
        if view.failed:
            status["failed"] = True
            status["exit_code"] = view.exit_code
        # the files' modalities, each array a loaded child reported replacing its own
        offline = {k: list(v) for k, v in card.architecture.items()} \
            if card.architecture is not None else modalities.text_only()
        architecture = modalities.merged(offline, view.info.get("architecture"))
        own: dict[str, Any] = {
            "id": view.name, "aliases": list(view.aliases), "tags": list(card.tags),
            "object": "model", "owned_by": "llamacpp", "created": self.created,
            "status": status, "architecture": architecture, "source": card.source,
            "can_remove": card.source == "cache"}
        # the policies it runs under (ROUTER.md 7), each shown only when on
        own.update((k, v) for k, v in (("ttl", view.ttl), ("pinned", view.pinned),
                                       ("concurrency", view.concurrency),
                                       ("group", view.group)) if v)
        # The child's info only adds fields, as upstream merges it: a llama-server child started
        # without --alias reports its file path in "aliases" (docs/CONFORMANCE.md, H7).
        return own | {k: v for k, v in view.info.items() if k not in own}

    async def list_models(self, request: Request) -> Response:
        if request.query_params.get("reload", "").lower() in ("1", "true"):
            try:
                reloaded = await self.reload()
            except SourceError as exc:
                return error(400, f"reload failed: {exc}")
            if reloaded.status != 200:  # the previous catalog stays in force
                return error(400, f"reload failed: {reloaded.message}")
        data = [self.model_info(view) for view in self.driver.listing() if not view.card.hidden]
        return JSONResponse({"object": "list", "data": data})

    async def reload(self) -> Reply:
        """Re-read the sources and hand them whole to the core, which decides what changes (a
        running model that changed or vanished is unloaded; a vanished one is forgotten once it
        is not running). A refused change (a name of two models) leaves the previous catalog.

        The folders, the preset and every GGUF header are read on a worker thread (a models-dir
        file with a huge metadata array used to stop the router for 12 s on every reload)."""
        specs = await self.blocking(self._read_sources)
        return self.driver.change_catalog(specs, (), reload=True)

    def _read_sources(self) -> tuple[ModelSpec, ...]:
        return tuple(self.spec_for(e) for e in self.load_entries())

    async def _api(self, request: Request, kind: type[LoadAsked] | type[UnloadAsked]) -> Response:
        body = await _json_body(request, self.bodies)
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
        body = await _json_body(request, self.bodies)
        if isinstance(body, Response):
            return body
        try:
            repo, tag = split_name(body.get("model"))
        except BadName as exc:
            return error(400, str(exc))
        try:
            files = await self.blocking(self.hub_files, repo)
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
        return JSONResponse({"success": True, "model": name})

    async def remove(self, request: Request) -> Response:
        """``DELETE /models?model=``: stop it if it runs (or cancel its download), then delete
        its files. Only cache models can be removed."""
        name = request.query_params.get("model", "")
        if not name:
            return error(400, "\"model\" must be a non-empty string (?model=user/repo:TAG)")
        view = next((v for v in self.driver.listing() if name in (v.name, *v.aliases)), None)
        if view is None:
            try:
                split_name(name)
            except BadName as exc:
                return error(400, str(exc))
            return error(404, f"model {name!r} not found", "not_found_error")
        if view.card.source != "cache":
            return error(400, f"model {view.name!r} is not removable (its source is "
                              f"{view.card.source or 'the configuration'}, not the cache)")
        return reply_response(await self.driver.call(RemoveAsked, view.name))

    def on_command(self, command: Command) -> None:
        """Keep the cache in step with what the core decided, and tell it a download's spec."""
        if isinstance(command, RemoveFiles) and self.cache is not None:
            try:
                remove_cached(self.cache, command.model)
            except (BadName, OSError) as exc:
                self.driver.log(f"[router] could not remove {command.model}: {exc}")
        elif isinstance(command, Publish) and command.event == "download_finished" \
                and self.cache is not None:
            # Known before the download child exits, so the load that follows has its file.
            for cached in list_cached(self.cache):
                if cached.name == command.model:
                    entry = ModelEntry(cached.name, cached.path, "cache", mmproj=cached.mmproj)
                    self.driver.change_catalog((self.spec_for(entry),), ())

    async def sse(self, request: Request) -> Response:
        send, receive = self.driver.subscribe()

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": subscribed\n\n"
                async with receive:
                    async for message in receive:
                        yield b"data: " + json.dumps(message).encode() + b"\n\n"
                if send in self.driver.overflowed:
                    yield b"data: " + json.dumps(OVERFLOW).encode() + b"\n\n"
            finally:
                self.driver.unsubscribe(send)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # -- the proxy -------------------------------------------------------------------------------

    async def proxy(self, request: Request) -> Response:
        body = await read_body(request, budget=self.bodies)
        if isinstance(body, Response):
            return body
        try:
            return await self._proxy(request, body)
        finally:
            self.bodies.give(len(body))

    async def _proxy(self, request: Request, body: bytearray) -> Response:
        streamed = False
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
            streamed = parsed.get("stream") is True
        # The path as the client sent it, percent-escapes kept (decoded, a %0a would be dropped
        # on the way, URLs lose tabs and newlines, and a %00 could not be sent at all); a byte
        # outside printable ASCII is escaped as itself.
        raw_path = request.scope.get("raw_path")
        query = request.scope.get("query_string", b"")
        target = (quote(raw_path, safe=_PRINTABLE) if raw_path else quote(request.url.path)) \
            + (f"?{quote(query, safe=_PRINTABLE)}" if query else "")
        autoload = _autoload(request.query_params.get("autoload"))
        if self.options.swap_notices and request.method == "POST" and \
                request.url.path.rstrip("/").endswith("chat/completions") and streamed:
            return await self._with_notices(request, body, model, autoload, target)
        req, outcome = await self.driver.route(model, autoload, request.is_disconnected)
        return await self._answer(request, body, req, outcome, target)

    async def _answer(self, request: Request, body: bytearray, req: int, outcome: Outcome,
                      target: str) -> Response:
        """The core's decision for a routed request carried out: its answer, or the child's."""
        if outcome.reply is not None:
            reply = outcome.reply
            kind = "not_found_error" if reply.kind == errors.MODEL_NOT_FOUND else (
                "invalid_request_error" if reply.status < 500 else "server_error")
            return _retry_after(error(reply.status, reply.message or reply.kind, kind), reply)
        assert outcome.forward is not None
        try:
            return await self._forward(request, body, req, outcome.forward, target)
        except BaseException:
            # Routed and not answered: the core must hear that it ended, or its model stays
            # busy for ever (the driver ignores a second end of one request).
            self.driver.ended(req, ok=False)
            raise

    async def _with_notices(self, request: Request, body: bytearray, model: str | None,
                            autoload: bool | None, target: str) -> Response:
        """``--swap-notices`` (ROUTER.md 7): a streamed chat that has to wait for its model
        gets the wait's progress (what loads, how far, what is stopped for it) as
        ``delta.reasoning_content`` chunks, each a line, then the child's stream. One that need
        not wait is routed as any other; what the core decides is the same either way."""
        send, receive = self.driver.subscribe()
        routed, gone = anyio.Event(), anyio.Event()
        decided: list[tuple[int, Outcome]] = []

        async def client_gone() -> bool:
            return gone.is_set()

        async def route() -> None:
            try:
                decided.append(await self.driver.route(model, autoload, client_gone))
            finally:
                routed.set()
            req, outcome = decided[0]
            if gone.is_set() and outcome.forward is not None:  # left as its turn came
                self.driver.ended(req, ok=False)

        self.driver.start_soon(route)
        await anyio.sleep(0)  # a decision at once (a ready model, an error) comes now
        if routed.is_set():
            self.driver.unsubscribe(send)
            req, outcome = decided[0]
            return await self._answer(request, body, req, outcome, target)
        name = model or "the model"
        created = int(time.time())

        def notice(text: str) -> bytes:
            return b"data: " + json.dumps({
                "id": f"chatcmpl-wait-{created}", "object": "chat.completion.chunk",
                "created": created, "model": name, "choices": [{
                    "index": 0, "finish_reason": None,
                    "delta": {"role": "assistant", "content": None,
                              "reasoning_content": text + "\n"}}]}).encode() + b"\n\n"

        async def stream() -> AsyncIterator[bytes]:
            upstream: Answer | None = None
            req: int | None = None
            ok = False
            try:
                yield notice(f"waiting for {name} to load")
                listening = True
                while not routed.is_set():
                    message = None
                    with anyio.move_on_after(0.1):
                        if listening:
                            try:
                                message = await receive.receive()
                            except (anyio.EndOfStream, anyio.ClosedResourceError):
                                listening = False
                        else:
                            await routed.wait()
                    text = None if message is None else _wait_notice(message)
                    if text is not None:
                        yield notice(text)
                req, outcome = decided[0]
                if outcome.reply is not None:
                    reply, req = outcome.reply, None
                    yield b"data: " + json.dumps({"error": {
                        "code": reply.status, "message": reply.message or reply.kind,
                        "type": "server_error" if reply.status >= 500 else
                        "invalid_request_error"}}).encode() + b"\n\n"
                    return
                assert outcome.forward is not None
                yield notice(f"{name} is ready")
                sent = await self._send(request, body, req, outcome.forward, target)
                if isinstance(sent, Response):  # the driver has been told it ended
                    req = None
                    yield b"data: " + bytes(sent.body) + b"\n\n"
                    return
                upstream = sent
                async for piece in upstream:
                    yield piece
                ok = upstream.status < 500
            finally:
                gone.set()
                self.driver.unsubscribe(send)
                if upstream is not None:
                    await upstream.aclose()
                if req is not None:
                    self.driver.ended(req, ok)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _forward(self, request: Request, body: bytearray, req: int, forward: Forward,
                       target: str) -> Response:
        """Send a routed request to its child, at the address the core's decision names, and
        relay the answer; the driver hears when the answer has ended."""
        upstream = await self._send(request, body, req, forward, target)
        if isinstance(upstream, Response):
            return upstream
        return await self._relay(upstream, req)

    async def _send(self, request: Request, body: bytearray, req: int, forward: Forward,
                    target: str) -> Answer | Response:
        """Open the routed request to its child: its answer, headers read and body streamed;
        or the error answer if the child cannot be reached (the driver is told it ended)."""
        if self.options.debug_fake_timing:  # routed: its model counts as busy meanwhile
            await anyio.sleep(FAKE_DELAY)
        child = self.driver.children.get(forward.instance)
        if child is None or forward.address is None:  # no address: a core driven by hand
            self.driver.ended(req, ok=False)
            return error(502, "the model's child process is gone", "server_error")
        host, _, port = forward.address.rpartition(":")
        # As bytes: a header value may hold any byte but CR, LF and NUL (found by
        # tests/test_fuzz_http.py: a latin-1 value as str could not be sent on, a 500)
        headers = [(k, v) for k, v in request.headers.raw
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        key = getattr(child, "api_key", None)  # a real child's own key (processes.py)
        if key:
            headers.append((b"authorization", f"Bearer {key}".encode()))
        try:
            upstream = await self.upstream.send(request.method, host, int(port), target, headers,
                                                body)
        except UpstreamError as exc:
            self.driver.ended(req, ok=False)
            return error(502, f"could not reach the model's child: {exc}", "server_error")
        return upstream

    async def _relay(self, upstream: Answer, req: int) -> Response:
        """The child's answer as this router's; the driver hears when it has ended."""
        # A header the server in front would refuse to write (a control character, a name that
        # is not a token) is dropped: sent on, it failed the answer after it was routed.
        out_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in upstream.headers
                       if k.decode("latin-1").lower() not in HOP_BY_HOP
                       and not k.lower().startswith(b"access-control-")
                       and _TOKEN.fullmatch(k) and not _CONTROL.search(v)}
        length = (upstream.header(b"content-length") or b"").decode("latin-1")
        if length.isdigit() and int(length) <= SMALL_BODY:
            # A small, sized answer (not a stream): one read, one plain response, less machinery.
            ok = False
            try:
                content = await upstream.read()
                ok = upstream.status < 500
            except UpstreamError:
                return error(502, "the model's child broke off its answer", "server_error")
            finally:
                await upstream.aclose()
                self.driver.ended(req, ok)
            return Response(content, status_code=upstream.status, headers=out_headers)

        events = (upstream.header(b"content-type") or b"").startswith(b"text/event-stream")

        async def relay() -> AsyncGenerator[bytes, None]:
            ok = False
            tail = b"\n\n"
            try:
                async for chunk in upstream:
                    yield chunk
                    tail = (tail + chunk)[-2:]
                ok = upstream.status < 500
            except UpstreamError:
                if events:  # the status is sent: say in the stream why it ends here
                    yield (b"" if tail == b"\n\n" else b"\n\n") + b"data: " + json.dumps(
                        {"error": {"code": 502, "message": "the model's child broke off its "
                                   "answer", "type": "server_error"}}).encode() + b"\n\n"
            finally:
                await upstream.aclose()
                self.driver.ended(req, ok)

        stream = relay()

        async def finish() -> None:
            # The stream may never have started (its headers refused, its client gone first):
            # then its own ``finally`` never ran.
            await stream.aclose()
            await upstream.aclose()
            self.driver.ended(req, ok=False)  # said already if the stream ran

        return _Relayed(stream, finish, status_code=upstream.status, headers=out_headers)


def _wait_notice(message: dict[str, Any]) -> str | None:
    """One line of a swap notice for a ``/models/sse`` event, or None for one not worth a line:
    a model's status changes, its load's stages and progress (in tenths), a download's bytes."""
    model, data = message.get("model"), message.get("data") or {}
    status, progress = data.get("status"), data.get("progress")
    if isinstance(progress, dict) and "current" in progress:
        value = progress.get("value")
        if isinstance(value, (int, float)) and (value in (0, 1) or round(value * 100) % 10 == 0):
            return f"{model}: {progress['current']} {value:.0%}"
        return None
    if isinstance(progress, dict) and "stage" in progress:
        return f"{model}: {progress['stage']}"
    if status in ("loading", "unloading", "loaded", "failed", "unloaded"):
        return f"{model}: {status}"
    return None


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (405 for a method no route takes) in the OpenAI error shape."""
    assert isinstance(exc, HTTPException)
    response = error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
    response.headers.update(exc.headers or {})
    return response


_PRINTABLE = "".join(map(chr, range(0x21, 0x7f)))  # what a forwarded path keeps as it is
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # not in a header value


class _Relayed(StreamingResponse):
    """A streamed answer that always runs ``finish`` when it is over, however it ended."""

    def __init__(self, content: AsyncIterator[bytes], finish: Callable[[], Awaitable[None]],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.finish = finish

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.finish()


def _hub_files(repo: str, token: str | None = None) -> list[str]:
    """The file names of ``repo`` on the hub ``HF_ENDPOINT`` names; LookupError if none."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    try:
        info = HfApi(token=token).model_info(repo)
    except RepositoryNotFoundError:
        raise LookupError(f"model repo {repo!r} not found on the hub") from None
    except HFValidationError as exc:  # split_name takes what the library takes: a 400 anyway
        raise LookupError(f"model repo {repo!r} is not a hub name: {exc}") from None
    return [s.rfilename for s in info.siblings or []]


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug of the router's still answers in the OpenAI error shape (and is logged)."""
    return error(500, f"internal error of the router: {type(exc).__name__}", "server_error")


class _ModelField(msgspec.Struct):
    """The one field of a request body the router reads; every other value is skipped as it is
    parsed, never built (a body of a million ``{}`` costs no more than its bytes)."""

    model: str | None = None
    stream: msgspec.Raw = msgspec.Raw()  # kept as its bytes: only `true` is looked for


_MODEL_FIELD = msgspec.json.Decoder(_ModelField)


def _parse(body: bytes | bytearray) -> dict[str, Any] | Response:
    """``{"model": ...}`` of a JSON object body (``{}`` when it names none), or the 400 to
    answer. The whole body is checked to be JSON (strict: no NaN), but only "model" is built."""
    if not body:
        return {}
    try:
        found = _MODEL_FIELD.decode(body)
    except msgspec.ValidationError as exc:
        if "$.model" in str(exc):
            return error(400, "\"model\" must be a string")
        return error(400, "the request body must be a JSON object")
    except (msgspec.DecodeError, RecursionError):  # RecursionError: [[[[...]]]]
        return error(400, "the request body is not valid JSON")
    out: dict[str, Any] = {} if found.model is None else {"model": found.model}
    if bytes(found.stream) == b"true":
        out["stream"] = True
    return out


async def _json_body(request: Request, budget: BodyBudget | None = None
                     ) -> dict[str, Any] | Response:
    body = await read_body(request, budget=budget)
    if isinstance(body, Response):
        return body
    if budget is not None:
        budget.give(len(body))  # parsed at once: only "model" is kept
    return _parse(body)


class BodyBudget:
    """Bytes of request bodies the router holds at once. A body is read whole (its "model"
    decides where it goes, and it is sent on with a Content-Length), so without a cap a few
    clients sending 90 MB each would hold that many times 90 MB: past ``limit`` a new body gets
    503 (at once when its Content-Length says so, else when its bytes pass it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


def _busy_bodies(budget: BodyBudget) -> Response:
    response = error(503, f"the router holds {budget.held} bytes of request bodies, near its "
                          f"limit of {budget.limit}; retry shortly", "unavailable_error")
    response.headers["Retry-After"] = "1"
    return response


async def read_body(request: Request, limit: int | None = None,
                    idle_timeout: float | None = None,
                    budget: BodyBudget | None = None) -> bytearray | Response:
    """The whole request body, or the error to answer instead: 413 past ``limit`` bytes (told by
    Content-Length before reading, or counted while reading), 408 when it stalls for
    ``idle_timeout`` seconds, 499 when the client went away, 503 when ``budget`` has no room
    for it. A body returned is taken from ``budget``: the caller gives back its length."""
    limit = MAX_BODY if limit is None else limit
    idle_timeout = BODY_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
    too_big = f"the request body is larger than the limit of {limit} bytes"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return error(413, too_big)
    taken = 0
    if budget is not None and length.isdigit():
        if not budget.take(int(length)):
            return _busy_bodies(budget)
        taken = int(length)
    body = bytearray()
    done = False
    stream = request.stream().__aiter__()
    try:
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
            if len(body) + len(piece) > limit:
                return error(413, too_big)
            if budget is not None and len(body) + len(piece) > taken:
                if not budget.take(len(body) + len(piece) - taken):
                    return _busy_bodies(budget)
                taken = len(body) + len(piece)
            body += piece
        done = True
        return body
    finally:
        if budget is not None:  # all of it unless a body is returned
            budget.give(taken - len(body) if done else taken)


def _autoload(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.lower() not in ("0", "false", "no", "off")


class _ApiKey:
    """With API keys (``--api-key``, ``--api-key-file``), every endpoint but /health needs
    ``Authorization: Bearer KEY`` with one of them."""

    def __init__(self, app: Any, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self.keys or scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value.startswith(b"Bearer "):
                given = value[len(b"Bearer "):]
        # constant time, and every key compared: which one matched is not told by the timing
        if sum(hmac.compare_digest(given, key) for key in self.keys):
            await self.app(scope, receive, send)
            return
        response = error(401, "Invalid API Key", "authentication_error")
        await response(scope, receive, send)

