"""``GET /metrics`` (``--metrics``): llama-server's Prometheus text, from what this child measured.

The names, help texts, types and order are llama-server's (server-task.cpp, ``to_metrics``). The
counters add up every generation (``timings.Generation``) and every embedding; the throughput
gauges cover the window since the previous scrape, which each scrape closes (llama-server's
"bucket"). This child decodes through llama-cpp-python, one request at a time and without a
draft model, so: ``n_decode_total`` counts the decodes ``Llama.generate`` makes (one per batch of
prompt, one per generated token it evaluates), ``n_busy_slots_per_decode`` is 1 once anything was
decoded, and the speculative counters stay 0.

Imported only with ``--metrics``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from refimpl.child.timings import Generation

CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass(slots=True)
class _Window:
    """Tokens and seconds, since start or since the last scrape."""

    tokens: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class Metrics:
    content_type = CONTENT_TYPE

    def __init__(self, n_batch: int) -> None:
        self.n_batch = max(n_batch, 1)
        # llama-server's Process-Start-Time-Unix header is its ggml_time_us() at start:
        # microseconds on the monotonic clock, whatever the name says; the same here
        self.started_us = time.monotonic_ns() // 1000
        self.prompt = _Window()
        self.predict = _Window()
        self.prompt_bucket = _Window()
        self.predict_bucket = _Window()
        self.prompt_cached = 0
        self.n_decode = 0
        self.n_tokens_max = 0

    def _prompt(self, evaluated: int, seconds: float) -> None:
        self.prompt.add(evaluated, seconds)
        self.prompt_bucket.add(evaluated, seconds)
        self.n_decode += math.ceil(evaluated / self.n_batch)

    def generated(self, record: Generation) -> None:
        """A generation has ended (``GenerationRecorder.on_done``; any thread)."""
        prompt_seconds = ((record.first or record.last or record.started) - record.started)
        self._prompt(record.evaluated, max(prompt_seconds, 0.0))
        self.prompt_cached += record.cached
        predict_seconds = record.last - record.first if record.predicted else 0.0
        self.predict.add(record.predicted, predict_seconds)
        self.predict_bucket.add(record.predicted, predict_seconds)
        # the last token sampled is not decoded: generation stopped there
        self.n_decode += max(record.predicted - 1, 0)
        self.n_tokens_max = max(self.n_tokens_max, len(record.prompt) + record.predicted)

    def embedded(self, n_tokens: int, seconds: float) -> None:
        """A prompt was embedded: all its tokens evaluated, nothing generated."""
        self._prompt(n_tokens, seconds)
        self.n_tokens_max = max(self.n_tokens_max, n_tokens)

    def scrape(self, processing: int, deferred: int) -> str:
        """The metrics text now; closes the gauges' window."""
        counters = [
            ("prompt_tokens_total",
             "Number of prompt tokens processed, excluding cached tokens", self.prompt.tokens),
            ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache",
             self.prompt_cached),
            ("prompt_seconds_total", "Total time spent processing prompts", self.prompt.seconds),
            ("tokens_predicted_total", "Number of generation tokens processed",
             self.predict.tokens),
            ("tokens_predicted_seconds_total", "Total time spent generating tokens",
             self.predict.seconds),
            ("n_decode_total", "Total number of llama_decode() calls, excluding speculative "
             "decoding and multimodal decoding", self.n_decode),
            ("n_tokens_max", "Largest observed sequence length (prompt + generation)",
             self.n_tokens_max),
            ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", 0),
            ("spec_decode_num_accepted_tokens_total",
             "Speculative: Total draft tokens accepted by the target model", 0),
            ("spec_decode_num_drafts_total",
             "Speculative: Total speculative decoding verification steps", 0),
        ]
        gauges = [
            ("prompt_tokens_seconds", "Average prompt throughput in tokens/s",
             self.prompt_bucket.per_second()),
            ("predicted_tokens_seconds", "Average generation throughput in tokens/s",
             self.predict_bucket.per_second()),
            ("requests_processing", "Number of requests processing", processing),
            ("requests_deferred", "Number of requests deferred", deferred),
            ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
             1 if self.n_decode else 0),
        ]
        self.prompt_bucket, self.predict_bucket = _Window(), _Window()
        lines = []
        for kind, items in (("counter", counters), ("gauge", gauges)):
            for name, description, value in items:
                lines += [f"# HELP llamacpp:{name} {description}",
                          f"# TYPE llamacpp:{name} {kind}",
                          f"llamacpp:{name} {_number(value)}"]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """A value as C++'s ``ostream << double`` writes it (6 significant digits, no ``.0``)."""
    return f"{value:g}"
