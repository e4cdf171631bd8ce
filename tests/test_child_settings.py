"""llama-server's generation settings and timings as the child fills them (no model needed)."""

from __future__ import annotations

import pytest

from refimpl.child import settings
from refimpl.child.timings import Generation, nothing_done


def test_an_openai_requests_settings_are_the_ones_handed_to_llama_cpp_python() -> None:
    got = settings.generation_settings(settings.from_openai({
        "temperature": 0.2, "top_k": 5, "max_tokens": 9, "stop": "x", "seed": 3,
        "logit_bias": {"12": 1.5}, "mirostat_mode": 2, "ignore_eos": True, "stream": True},
        repeat_last_n=64), full=True)
    assert (got["temperature"], got["top_k"], got["seed"], got["mirostat"]) == (0.2, 5, 3, 2)
    assert got["n_predict"] == got["max_tokens"] == 9 and got["stop"] == ["x"]
    assert got["logit_bias"] == [[12, 1.5]] and got["ignore_eos"] and got["stream"]
    # what llama-cpp-python has no sampler for is reported switched off
    assert got["dry_multiplier"] == 0.0 and got["xtc_probability"] == 0.0
    assert list(got)[:4] == ["seed", "temperature", "dynatemp_range", "dynatemp_exponent"]
    short = settings.short(got)
    assert "stop" not in short and "grammar" not in short and "samplers" in short


def test_no_max_tokens_means_until_the_end() -> None:
    assert settings.from_openai({"max_tokens": None}, 64)["n_predict"] == -1


def test_timings_divide_at_the_first_token() -> None:
    g = Generation(prompt=[1, 2, 3, 4], cached=1, started=10.0, first=10.5, last=11.5,
                   predicted=5)
    t = g.timings()
    assert (t["cache_n"], t["prompt_n"], t["predicted_n"]) == (1, 3, 5)
    assert t["prompt_ms"] == pytest.approx(500.0) and t["predicted_ms"] == pytest.approx(1000.0)
    assert t["prompt_per_second"] == pytest.approx(6.0)
    assert t["predicted_per_token_ms"] == pytest.approx(200.0)
    assert g.usage() == {"completion_tokens": 5, "prompt_tokens": 4, "total_tokens": 9,
                         "prompt_tokens_details": {"cached_tokens": 1}}
    assert set(nothing_done()) == set(t) and not any(nothing_done().values())
