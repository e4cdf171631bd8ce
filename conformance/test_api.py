"""ROUTER.md sections 1 and 4, one test per clause, against a router started from its command."""

from __future__ import annotations

import json
import socket
from collections import Counter
from typing import Any, Callable

import h11
import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs without types-psutil
import pytest

from .routers import Router
from .deviations import deviation

pytestmark = pytest.mark.live
M = "tiny-xs"  # the smallest model: quickest to load


def assert_openai_error(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert set(body["error"]) >= {"code", "message", "type"}, body
    return dict(body["error"])


def test_health(start_router: Callable[..., Router]) -> None:
    """Section 4: GET /health answers 200 when the router is up."""
    router = start_router()
    assert router.client.get("/health").status_code == 200


def test_children_get_the_router_port_and_no_router_only_flags(
        start_router: Callable[..., Router], tiny_models: Any) -> None:
    """Section 1: a child listens on 127.0.0.1 on a port of its own, has
    LLAMA_SERVER_ROUTER_PORT=<router port>, and gets neither the API key nor --models-* flags."""
    router = start_router("--models-max", "2", api_key="sekrit")
    assert router.chat(M).status_code == 200
    child = router.child(tiny_models[M].path)
    process = psutil.Process(child.pid)
    argv, env = process.cmdline(), process.environ()
    assert env.get("LLAMA_SERVER_ROUTER_PORT") == str(router.port), env
    assert child.port != router.port
    assert "--host" not in argv or argv[argv.index("--host") + 1] == "127.0.0.1", argv
    assert not any("sekrit" in item for item in argv + list(env.values())), argv
    assert not any(item.startswith("--models-") for item in argv), argv


def test_post_routes_by_body_model(start_router: Callable[..., Router]) -> None:
    """Section 4: POST endpoints are routed by the body's "model"; autoload loads it."""
    router = start_router()
    r = router.chat(M)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    assert router.status(M) == "loaded"


def test_get_routes_by_query_model_and_keeps_path_and_query(
        start_router: Callable[..., Router]) -> None:
    """Section 4: the child gets the path (its /props answers for the model). A child that echoes
    the query too is in tests/test_proxy.py, which is what catches Z21 (query dropped)."""
    router = start_router()
    assert router.chat(M).status_code == 200
    r = router.client.get("/props", params={"model": M, "foo": "1"})
    assert r.status_code == 200, r.text
    assert r.json().get("role") != "router"


def test_missing_model_is_400(start_router: Callable[..., Router]) -> None:
    """Section 4: a POST without "model" is 400 with an OpenAI error body."""
    router = start_router()
    r = router.client.post("/v1/chat/completions", json={"messages": []})
    assert_openai_error(r, 400)


def test_unknown_model_is_400_or_404(start_router: Callable[..., Router]) -> None:
    """Section 4: an unknown model is 400/404 with an OpenAI error body."""
    router = start_router()
    assert_openai_error(router.chat("no-such-model"), 400, 404)


def test_no_autoload_answers_not_loaded(start_router: Callable[..., Router]) -> None:
    """Section 4: with --no-models-autoload, a model not running is 400 "not loaded"."""
    router = start_router("--no-models-autoload")
    err = assert_openai_error(router.chat(M), 400)
    assert "not loaded" in err["message"]
    assert router.status(M) == "unloaded"


def test_autoload_query_overrides(start_router: Callable[..., Router]) -> None:
    """Section 4: ?autoload=false on one request overrides the router's autoload."""
    router = start_router()
    r = router.client.post("/v1/chat/completions?autoload=false", json={
        "model": M, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert_openai_error(r, 400)
    assert router.status(M) == "unloaded"


def test_models_list_shape(start_router: Callable[..., Router]) -> None:
    """Section 4: GET /models lists every model with id, object, owned_by, created, status."""
    router = start_router()
    body = router.client.get("/models").json()
    assert body["object"] == "list"
    for model in body["data"]:
        assert {"id", "object", "owned_by", "created", "status"} <= set(model), model
        assert model["status"]["value"] in ("unloaded", "loading", "loaded", "sleeping")
    assert M in {m["id"] for m in body["data"]}


def test_load_and_unload_api(start_router: Callable[..., Router]) -> None:
    """Section 4: POST /models/load and /unload: 404/400 errors, success, no "failed" (Z18)."""
    router = start_router()
    assert_openai_error(router.client.post("/models/load", json={"model": "nope"}), 404, 400)
    assert_openai_error(router.client.post("/models/unload", json={"model": M}), 400)
    r = router.client.post("/models/load", json={"model": M})
    assert r.status_code == 200 and r.json().get("success") is True, r.text
    router.events.wait_for(M, "loaded")
    assert_openai_error(router.client.post("/models/load", json={"model": M}), 400)
    r = router.client.post("/models/unload", json={"model": M})
    assert r.status_code == 200, r.text
    router.events.wait_for(M, "unloaded")
    info = router.models()[M]["status"]
    assert info["value"] == "unloaded" and not info.get("failed"), info  # Z18


def test_sse_reports_status_changes(start_router: Callable[..., Router]) -> None:
    """Section 4: /models/sse reports loading then loaded for an autoloaded model."""
    router = start_router()
    assert router.chat(M).status_code == 200
    router.events.wait_for(M, "loaded")
    statuses = [s for s in router.events.statuses(M) if s]
    assert statuses[0] == "loading" and "loaded" in statuses, statuses


def test_props_without_model_describes_the_router(start_router: Callable[..., Router]) -> None:
    """Section 4: GET /props without a model: role router, max_instances, models_autoload."""
    router = start_router("--models-max", "3")
    body = router.client.get("/props").json()
    assert body["role"] == "router" and body["max_instances"] == 3, body


def test_api_key_guards_everything_but_health(start_router: Callable[..., Router]) -> None:
    """Section 4: --api-key guards every endpoint but /health (401 authentication_error)."""
    router = start_router(api_key="sekrit")
    bare = httpx.Client(base_url=router.url, timeout=10)
    try:
        assert bare.get("/health").status_code == 200
        for method, path in [("GET", "/models"), ("GET", "/props"), ("POST", "/models/load"),
                             ("POST", "/v1/chat/completions"), ("GET", f"/props?model={M}")]:
            r = bare.request(method, path, json={"model": M})
            err = assert_openai_error(r, 401)
            assert err["type"] == "authentication_error"
        assert bare.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert router.client.get("/models", headers=router.headers).status_code == 200
    finally:
        bare.close()


def test_streaming_is_relayed_chunk_by_chunk(start_router: Callable[..., Router]) -> None:
    """Section 4: a streamed answer is relayed as SSE events, ending in [DONE]."""
    router = start_router()
    events = []
    with router.client.stream("POST", "/v1/chat/completions", json={
            "model": M, "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]" and len(events) >= 3, events


def test_no_duplicated_headers_and_right_length(start_router: Callable[..., Router]) -> None:
    """Z20: no header twice (Server, Date, Content-Length ...), and the body length is right."""
    router = start_router()
    r = router.chat(M)
    names = Counter(k.decode("latin-1").lower() for k, _ in r.headers.raw)
    assert all(n == 1 for n in names.values()), r.headers.raw
    if "content-length" in names:
        assert int(r.headers["content-length"]) == len(r.content)


@deviation("U3")
def test_a_kept_alive_connection_takes_the_next_request(
        start_router: Callable[..., Router]) -> None:
    """Section 4, RFC 9112 9.3: after a proxied answer without "Connection: close", the
    client's persistent connection takes its next request."""
    router = start_router()
    assert router.chat(M).status_code == 200
    body = json.dumps({"model": M, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 2}).encode()
    request = h11.Request(method="POST", target="/v1/chat/completions", headers=[
        ("Host", "127.0.0.1"), ("Connection", "keep-alive"),
        ("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", router.port), timeout=30) as sock:
        for attempt in (1, 2, 3):
            sock.sendall(conn.send(request) + conn.send(h11.Data(data=body))
                         + conn.send(h11.EndOfMessage()))
            status = None
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise AssertionError(f"request {attempt} on the kept-alive connection: "
                                         f"{exc}; the router closed it without saying so") from exc
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert status == 200, (attempt, status)
            if conn.our_state is h11.MUST_CLOSE:
                return  # the answer said "Connection: close": honest, the client reconnects
            conn.start_next_cycle()
