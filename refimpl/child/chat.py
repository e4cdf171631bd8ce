"""The chat stream as llama-server sends it, over llama-cpp-python's chat handlers.

llama-server's first chunk of a streamed chat is ``"delta": {"role": "assistant", "content":
null}`` (server-task.cpp, ``to_json_oaicompat_chat``): clients read ``delta["content"]`` on every
chunk whose ``finish_reason`` is null. llama-cpp-python's first delta has the role alone. The
model's chat handler is wrapped here, so the reused OpenAI route streams llama-server's shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llama_cpp
import llama_cpp.llama_chat_format as chat_format


def with_content(chunk: Any) -> Any:
    """A chunk whose deltas all carry a "content" key (null where there was none)."""
    for choice in chunk.get("choices", ()):
        delta = choice.get("delta")
        if isinstance(delta, dict) and "role" in delta:
            delta.setdefault("content", None)
    return chunk


def like_llama_server(llama: llama_cpp.Llama) -> llama_cpp.Llama:
    """``llama``, its streamed chats shaped like llama-server's; returned for chaining."""
    name = llama.chat_format or ""
    inner = (llama.chat_handler or llama._chat_handlers.get(name)
             or chat_format.get_chat_completion_handler(name))

    def handler(**kwargs: Any) -> Any:
        result = inner(**kwargs)
        if isinstance(result, Iterator):
            return (with_content(chunk) for chunk in result)
        return result

    llama.chat_handler = handler
    return llama
