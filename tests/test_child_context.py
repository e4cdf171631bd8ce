"""A generation that reaches the end of the context ends there with ``finish_reason: "length"``
(refimpl/child/context.py), as llama-server's does without context shift; llama-cpp-python alone
asks llama.cpp for one token past the context and raises "llama_decode returned 1" (a 500)."""

from __future__ import annotations

import llama_cpp
import pytest

from fixtures.tiny_models import build_models_dir, default_cache_dir
from refimpl.child.context import within_context
from refimpl.child.detokenize import linear  # streamed: linear, not quadratic, in its length

SEEDS = range(16)  # tiny-xs, no max_tokens: seeds 2 and 13 run to the end of a 512 context


def chats(llama: llama_cpp.Llama, stream: bool) -> list[str | Exception]:
    """Each seed's finish reason, or the error it raised."""
    out: list[str | Exception] = []
    for seed in SEEDS:
        try:
            got = llama.create_chat_completion(
                messages=[{"role": "user", "content": "hi"}], seed=seed, stream=stream)
            last = list(got)[-1] if stream else got
            out.append(last["choices"][0]["finish_reason"])  # type: ignore[index]
        except RuntimeError as exc:
            out.append(exc)
    return out


@pytest.fixture(scope="module")
def model() -> str:
    return str(build_models_dir(default_cache_dir())["tiny-xs"].path)


def test_llama_cpp_python_alone_fails_at_the_end_of_the_context(model: str) -> None:
    found = chats(llama_cpp.Llama(model, n_ctx=512, verbose=False), stream=False)
    assert any(isinstance(f, RuntimeError) and "llama_decode" in str(f) for f in found), found


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_within_the_context_it_ends_with_length(model: str, stream: bool) -> None:
    llama = within_context(linear(llama_cpp.Llama(model, n_ctx=512, verbose=False)))
    found = chats(llama, stream)
    assert not [f for f in found if isinstance(f, Exception)], found
    assert "length" in found, found  # some did run to the end of the context
    assert llama.n_tokens <= 512
