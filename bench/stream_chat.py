"""Time of a streamed chat in the child's model, with and without the linear detokenizer.

    python bench/stream_chat.py                  # 250 and 1000 tokens, both ways
    python bench/stream_chat.py --tokens 500 --only linear

llama-cpp-python re-detokenizes the whole completion on each streamed token, with a copy per
piece (refimpl/child/detokenize.py); ``plain`` is that, ``linear`` is the child's model as
``refimpl.child.model.load_llama`` makes it. The context is sized to fit; the tiny model babbles
past its training context, which is fine for a timing.
"""

from __future__ import annotations

import argparse
import time

import llama_cpp

from fixtures.tiny_models import build_models_dir, default_cache_dir
from refimpl.child import chat, detokenize


def stream(tokens: int, linear: bool, model: str) -> tuple[int, float]:
    llama = llama_cpp.Llama(model_path=model, n_ctx=tokens + 64, verbose=False)
    chat.like_llama_server(llama)
    if linear:
        detokenize.linear(llama)
    start = time.perf_counter()
    chunks = sum(1 for _ in llama.create_chat_completion(
        messages=[{"role": "user", "content": "hi"}], max_tokens=tokens, stream=True,
        temperature=0.8, seed=3))
    return chunks, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, action="append", help="default: 250 and 1000")
    ap.add_argument("--only", choices=["plain", "linear"])
    args = ap.parse_args()
    model = str(build_models_dir(default_cache_dir())["tiny-xs"].path)
    for tokens in args.tokens or [250, 1000]:
        for way in ("plain", "linear"):
            if args.only in (None, way):
                chunks, seconds = stream(tokens, way == "linear", model)
                print(f"{tokens:5d} tokens {way:6s} {seconds:8.2f} s  ({chunks} chunks, "
                      f"{tokens / seconds:7.0f} tokens/s)", flush=True)


if __name__ == "__main__":
    main()
