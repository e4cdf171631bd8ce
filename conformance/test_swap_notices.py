"""ROUTER.md 7, swap notices (``--swap-notices``): a streamed chat that waits for its model's
load gets the wait's progress as ``delta.reasoning_content`` chunks, one line each, before the
answer; one that need not wait, or a router without the flag, gets the child's stream alone; an
answer the core gives at once (an unknown model) keeps its status."""

from __future__ import annotations

import json
from typing import Any, Callable

import httpx
import pytest

from .routers import Router, Target

pytestmark = pytest.mark.live


@pytest.fixture(autouse=True)
def reference_only(target: Target) -> None:
    if target.binary:
        pytest.skip("ROUTER.md 7's policies are the reference router's (llama-server has none)")


@pytest.fixture
def router(start_router: Callable[..., Router], request: pytest.FixtureRequest) -> str:
    pytest.importorskip("llama_cpp")
    flags = getattr(request, "param", ["--swap-notices"])
    return start_router("--models-max", "1", *flags).url


def streamed(url: str, model: str) -> tuple[int, list[dict[str, Any]], bool]:
    """The status, the chunks (parsed) and whether ``[DONE]`` ended the stream."""
    body = {"model": model, "stream": True, "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]}
    chunks, done = [], False
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            return r.status_code, [json.loads(r.read())], False
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks.append(json.loads(line[6:]))
    return r.status_code, chunks, done


def notices(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"]["reasoning_content"] for c in chunks
            if c.get("choices") and "reasoning_content" in c["choices"][0].get("delta", {})]


def test_a_chat_that_waits_sees_the_load_then_the_answer(router: str) -> None:
    status, chunks, done = streamed(router, "tiny-xs")
    assert status == 200 and done, chunks
    said = notices(chunks)
    assert said[0] == "waiting for tiny-xs to load\n" and said[-1] == "tiny-xs is ready\n", said
    assert "tiny-xs: loading\n" in said, said
    assert all(line.endswith("\n") and "\n" not in line[:-1] for line in said)
    first_answer = next(i for i, c in enumerate(chunks) if "reasoning_content" not in
                        c["choices"][0].get("delta", {}))
    assert len(notices(chunks[first_answer:])) == 0, "a notice after the answer began"
    assert chunks[-1]["choices"][0]["finish_reason"] is not None
    # the model is ready now: no wait, no notice; a swap to another model waits again
    assert notices(streamed(router, "tiny-xs")[1]) == []
    said = notices(streamed(router, "tiny-s")[1])
    assert {"tiny-xs: unloading\n", "tiny-xs: unloaded\n"} & set(said), said  # stopped for it
    assert said[-1] == "tiny-s is ready\n", said


@pytest.mark.parametrize("router", [[]], indirect=True, ids=["without-the-flag"])
def test_without_the_flag_a_wait_says_nothing(router: str) -> None:
    status, chunks, done = streamed(router, "tiny-xs")
    assert status == 200 and done and notices(chunks) == [], chunks


def test_an_answer_at_once_keeps_its_status(router: str) -> None:
    status, chunks, _done = streamed(router, "no-such-model")
    plain = httpx.post(router + "/v1/chat/completions", timeout=60, json={
        "model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert status == plain.status_code != 200 and chunks == [plain.json()], chunks


def test_a_client_that_leaves_during_the_wait_holds_nothing(
        start_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under LLAMA_SERVER_DEBUG_FAKE_TIMING a start takes 2 s more: the client reads the first
    notice and leaves; the model it waited for must not stay busy (with one slot, the next
    model could then never load)."""
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("LLAMA_SERVER_DEBUG_FAKE_TIMING", "1")  # the router's environment
    url = start_router("--models-max", "1", "--swap-notices").url
    body = {"model": "tiny-xs", "stream": True, "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
        assert "waiting for tiny-xs to load" in first, first
    r2 = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": "tiny-s", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r2.status_code == 200, r2.text
