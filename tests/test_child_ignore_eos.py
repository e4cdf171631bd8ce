"""llama-server's ``ignore_eos``: generation goes on past the end-of-generation token, which is
never sampled; without it, a model made to favour that token stops at once."""

from __future__ import annotations

import httpx
import llama_cpp
import pytest

from conformance.wire import ours_command, running
from fixtures.tiny_models import build_models_dir, default_cache_dir
from refimpl.router.processes import free_port


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_ignore_eos_goes_past_the_end_token(path: str) -> None:
    model = str(build_models_dir(default_cache_dir())["tiny-xs"].path)
    eos = llama_cpp.Llama(model_path=model, n_ctx=64, verbose=False, vocab_only=True).token_eos()
    body: dict[str, object] = {"max_tokens": 12, "temperature": 0, "logit_bias": {str(eos): 100}}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path
                else {"prompt": "hello"})
    port = free_port()
    with running(ours_command(model, port), port) as url:
        stops = httpx.post(url + path, json=body, timeout=60).json()
        goes_on = httpx.post(url + path, json={**body, "ignore_eos": True}, timeout=60).json()
    assert stops["choices"][0]["finish_reason"] == "stop"
    assert stops["usage"]["completion_tokens"] <= 1
    assert goes_on["choices"][0]["finish_reason"] == "length"
    assert goes_on["usage"]["completion_tokens"] >= 12
