"""A long streamed chat over HTTP: our child against llama-server's, on the same tiny model.

    python bench/stream_http.py --router-bin PATH --write     # both, into docs/BENCHMARKS.md
    python bench/stream_http.py --tokens 250                  # ours only

Each child is started straight (no router) with a context that fits, and asked for the same
streamed chat (``ignore_eos``, a fixed seed) ``--runs`` times; the table has the median time to
the first token and to ``[DONE]``, the tokens streamed, and tokens per second. The children
alternate, run by run, so that a busy machine weighs on both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import write_section  # noqa: E402
from conformance.wire import ours_command, running, theirs_command, version_of  # noqa: E402
from fixtures.procs import executable  # noqa: E402
from fixtures.tiny_models import SIZES, build_models_dir, default_cache_dir  # noqa: E402
from refimpl.router.processes import free_port  # noqa: E402


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give a whole number above 0")
    return value


def stream_once(url: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds to [DONE], tokens streamed)."""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens,
            "stream": True, "temperature": 0.8, "seed": 3, "ignore_eos": True}
    first, count, told = None, 0, None
    start = time.perf_counter()
    with httpx.Client(timeout=600) as client, client.stream(
            "POST", url + "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            # the count a child gives (llama-server: timings.predicted_n in its last chunk) wins
            # over chunks counted: a token that ends inside a character may share a chunk
            said = (chunk.get("timings") or {}).get("predicted_n") or \
                (chunk.get("usage") or {}).get("completion_tokens")
            if isinstance(said, int):
                told = said
            for choice in chunk.get("choices", []):
                # a token a chunk; a token that ends inside a character streams as ""
                if isinstance((choice.get("delta") or {}).get("content"), str):
                    count += 1
                    if first is None:
                        first = time.perf_counter() - start
    return ((first if first is not None else float("nan")), time.perf_counter() - start,
            count if told is None else told)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--router-bin", help="a llama-server binary: its child is measured too")
    p.add_argument("--tokens", type=positive, default=1000, help="max_tokens (default: 1000)")
    p.add_argument("--runs", type=positive, default=3, help="chats per child (default: 3)")
    p.add_argument("--model", default="tiny-l", choices=[f"tiny-{size}" for size in SIZES],
                   help="a tiny model trained for the whole stream (default: tiny-l, 2048 "
                        "tokens of context; llama-server ends a stream at the training context)")
    p.add_argument("--write", action="store_true", help="write the table to docs/BENCHMARKS.md")
    a = p.parse_args()
    if a.router_bin and not executable(a.router_bin):
        p.error(f"--router-bin {a.router_bin}: not an executable file")
    model = str(build_models_dir(default_cache_dir())[a.model].path)
    context = ["-c", str(a.tokens + 64)]
    sides = {"refimpl child": lambda port: ours_command(model, port) + context}
    if a.router_bin:
        version = version_of(a.router_bin)
        sides[f"llama-server child ({version})"] = (
            lambda port: theirs_command(a.router_bin, model, port) + context)
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in sides}
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, command in sides.items():
            port = free_port()
            urls[name] = stack.enter_context(running(command(port), port))
        measure(urls, results, a.tokens, a.runs)
    rows = ["| child | first token ms | whole stream s | tokens | tokens/s |", "|---|---|---|---|---|"]
    rate: dict[str, float] = {}
    for name, runs in results.items():
        firsts, totals, counts = zip(*runs)
        total = statistics.median(totals)
        rate[name] = statistics.median(c / t for _, t, c in runs)
        rows.append(f"| {name} | {statistics.median(firsts) * 1e3:.0f} | {total:.2f} | "
                    f"{statistics.median(counts):.0f} | {rate[name]:.0f} |")
    table = "\n".join(rows)
    if len(rate) == 2:
        ours, theirs = rate.values()
        table += f"\n\nTokens/s ratio, ours / llama-server's: {ours / theirs:.2f}"
    print(table)
    if a.write:
        command = "python bench/stream_http.py --write" + (" --router-bin PATH" if a.router_bin
                                                          else "")
        write_section("<!-- stream_http -->", (
            f"## A long streamed chat, child against child\n\nCommand: `{command}` "
            f"({a.tokens} tokens asked, `ignore_eos`, {a.runs} runs each, medians; {a.model}; "
            f"children started straight, alternating)\n\n{table}"))
    return 0


def measure(urls: dict[str, str], results: dict[str, list[tuple[float, float, int]]],
            tokens: int, runs: int) -> None:
    for name, url in urls.items():  # warm each: the first answer pays for lazy set-up
        stream_once(url, 8)
    for run in range(runs):
        for name, url in urls.items():
            results[name].append(stream_once(url, tokens))
            print(f"  run {run + 1}/{runs} {name}: {results[name][-1][1]:.2f} s, "
                  f"{results[name][-1][2]} tokens", flush=True)


if __name__ == "__main__":
    sys.exit(main())
