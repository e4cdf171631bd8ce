"""The child's streamed chat (issue 13): llama-server's first chunk, and linear-time text.

Work is counted, not timed: llama.cpp's token-to-piece calls during a streamed completion.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
import llama_cpp.llama_cpp as llama_low

from fixtures.tiny_models import ModelsDir
from refimpl.child.cli import parse_options
from refimpl.child.detokenize import LinearDetokenizer
from refimpl.child.model import load_llama

N = 200


@pytest.fixture(scope="module")
def llama(tiny_models: ModelsDir) -> Any:
    options = parse_options(["-m", str(tiny_models["tiny-s"].path), "-c", "1024"], env={})
    return load_llama(options, lambda progress: True)


def _stream(llama: Any, max_tokens: int) -> list[dict[str, Any]]:
    return list(llama.create_chat_completion(
        messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens, stream=True,
        temperature=0.8, seed=3))


def test_the_first_chunk_has_llama_servers_delta(llama: Any) -> None:
    chunks = _stream(llama, 4)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert all("content" in c["choices"][0]["delta"] for c in chunks
               if c["choices"][0]["finish_reason"] is None)


def test_a_streamed_completion_turns_each_token_into_text_once(
        llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = llama_low.llama_token_to_piece

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(llama_low, "llama_token_to_piece", counted)
    chunks = _stream(llama, N)
    assert len(chunks) > N // 2
    # llama-cpp-python alone: every token's piece again for every token, N * N / 2 calls
    assert calls <= 2 * N, calls


def test_the_linear_detokenizer_makes_the_same_bytes(llama: Any) -> None:
    model = llama._model
    fast = LinearDetokenizer(model)
    rng = random.Random(7)
    n_vocab = llama.n_vocab()
    tokens: list[int] = []
    for _ in range(300):
        if rng.random() < 0.1:
            tokens = [llama.token_bos()] if rng.random() < 0.5 else []
        tokens.append(rng.randrange(n_vocab))
        special = rng.random() < 0.5
        prefix = tokens[:rng.randrange(len(tokens) + 1)] if rng.random() < 0.2 else tokens
        assert fast(prefix, special=special) == type(model).detokenize(model, prefix, special)
