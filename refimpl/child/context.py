"""A generation that reaches the end of the context ends there, as llama-server's does.

llama-cpp-python bounds a completion's ``max_tokens`` by the context, but its ``generate``
evaluates each sampled token before it is counted: a generation that runs to the end of the
context asks llama.cpp to evaluate one token past it, and the request fails with 500
"llama_decode returned 1" (a chat without ``max_tokens`` on a tiny model: about 1 in 9). Here
``generate`` stops before that step; ``_create_completion`` then ends the completion with
``finish_reason: "length"``, which is what llama-server answers when its context is full (it does
not shift the context unless ``--context-shift`` is given).
"""

from __future__ import annotations

from typing import Any, Generator

import llama_cpp


def within_context(llama: llama_cpp.Llama) -> llama_cpp.Llama:
    """``llama``, whose ``generate`` never evaluates past its context; returned for chaining."""
    inner = llama.generate

    def generate(*args: Any, **kwargs: Any) -> Generator[int, Any, None]:
        tokens = inner(*args, **kwargs)
        try:
            token = next(tokens)
            while True:
                sent = yield token
                # the next step evaluates the token just sampled (or the tokens sent back)
                if llama.n_tokens + (len(sent) if sent else 1) > llama.n_ctx():
                    return
                token = tokens.send(sent)
        except StopIteration:
            return
        finally:
            tokens.close()

    llama.generate = generate  # type: ignore[method-assign]
    return llama
