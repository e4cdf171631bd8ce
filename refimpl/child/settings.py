"""llama-server's generation settings (``task_params::to_json``), filled from what is in effect.

llama-server reports them in ``/props`` (the defaults), ``/slots`` (each slot's last task) and in
the final answer of ``/completion`` (``generation_settings``). The values this child's sampler
really uses come from the request and the command line (``sampling``). Every other key names a
llama.cpp sampler or feature that llama-cpp-python's sampler chain does not have; it is reported
with the value that turns that feature off in llama-server, which is what is in effect here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# llama-cpp-python's chain (``Llama._init_sampler``) for a temperature above 0 without mirostat:
# penalties, then top-k, typical, top-p, min-p, temperature. No dry, xtc or top-n-sigma.
SAMPLERS = ("penalties", "top_k", "typ_p", "top_p", "min_p", "temperature")
# llama-cpp-python's sampler keeps at least one candidate in each truncating step
# (``min_keep = max(1, n_probs)`` with its n_probs fixed at 0).
MIN_KEEP = 1
# llama-server's defaults for its DRY sampler; off here (multiplier 0) as llama-cpp-python has none.
DRY_SEQUENCE_BREAKERS = ("\n", ":", "\"", "*")

# Keys only the full form has (``/completion``'s ``generation_settings``); ``/props`` and
# ``/slots`` leave them out, as llama-server's ``to_json(true)`` does.
_FULL_ONLY = frozenset({"dry_sequence_breakers", "stop", "logit_bias", "grammar", "grammar_lazy",
                        "grammar_triggers", "preserved_tokens"})

# What this child's routes use when a request sets nothing (llama-cpp-python's defaults, which
# are llama-server's too for these).
DEFAULTS: dict[str, Any] = {
    "seed": 4294967295, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
    "typical_p": 1.0, "repeat_last_n": 64, "repeat_penalty": 1.0, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
    "stop": [], "n_predict": -1, "ignore_eos": False, "stream": False, "logit_bias": [],
    "n_probs": 0, "grammar": "",
}


def generation_settings(sampling: Mapping[str, Any], *, full: bool) -> dict[str, Any]:
    """llama-server's settings object, in its key order: ``sampling`` (llama-server's key names,
    the values in effect) over ``DEFAULTS``; ``full`` for ``/completion``'s form."""
    s = {**DEFAULTS, **sampling}
    out: dict[str, Any] = {
        "seed": s["seed"],
        "temperature": s["temperature"],
        "dynatemp_range": 0.0,  # no dynamic temperature in llama-cpp-python
        "dynatemp_exponent": 1.0,
        "top_k": s["top_k"],
        "top_p": s["top_p"],
        "min_p": s["min_p"],
        "top_n_sigma": -1.0,  # no top-n-sigma sampler
        "xtc_probability": 0.0,  # no XTC sampler
        "xtc_threshold": 0.1,
        "typical_p": s["typical_p"],
        "repeat_last_n": s["repeat_last_n"],
        "repeat_penalty": s["repeat_penalty"],
        "presence_penalty": s["presence_penalty"],
        "frequency_penalty": s["frequency_penalty"],
        "dry_multiplier": 0.0,  # no DRY sampler
        "dry_base": 1.75,
        "dry_allowed_length": 2,
        "dry_penalty_last_n": s["repeat_last_n"],
        "dry_sequence_breakers": list(DRY_SEQUENCE_BREAKERS),
        "mirostat": s["mirostat"],
        "mirostat_tau": s["mirostat_tau"],
        "mirostat_eta": s["mirostat_eta"],
        "adaptive_target": -1.0,  # no adaptive-p sampler
        "adaptive_decay": 0.9,
        "stop": list(s["stop"]),
        "max_tokens": s["n_predict"],
        "n_predict": s["n_predict"],
        "n_keep": 0,  # no context shift: a prompt longer than the context is refused
        "n_discard": 0,
        "ignore_eos": s["ignore_eos"],
        "stream": s["stream"],
        "logit_bias": s["logit_bias"],
        "n_probs": s["n_probs"],
        "min_keep": MIN_KEEP,
        "grammar": s["grammar"],
        "grammar_lazy": False,  # no lazy grammars, tool-call triggers or preserved tokens
        "grammar_triggers": [],
        "preserved_tokens": [],
        # the answer's text is taken as it is: no tool-call or reasoning parsing, which is what
        # llama.cpp's "Content-only" parser and reasoning format "none" do
        "chat_format": "Content-only",
        "reasoning_format": "none",
        "reasoning_in_content": False,
        "generation_prompt": "",
        "samplers": list(SAMPLERS),
        "speculative.types": "none",  # no draft model
        "timings_per_token": False,  # timings come in the final answer only
        "post_sampling_probs": False,  # n_probs reports pre-sampling probabilities
        "backend_sampling": False,
        "lora": [],  # no adapters
    }
    return out if full else short(out)


def short(full: Mapping[str, Any]) -> dict[str, Any]:
    """The form ``/props`` and ``/slots`` report, from the full one."""
    return {k: v for k, v in full.items() if k not in _FULL_ONLY}


def logit_bias_pairs(bias: Mapping[str, float] | None) -> list[list[Any]]:
    """An OpenAI ``logit_bias`` object as llama-server reports it: ``[[token, bias], ...]``."""
    out: list[list[Any]] = []
    for key, value in (bias or {}).items():
        try:
            out.append([int(key), value])
        except ValueError:  # logit_bias_type "tokens": the key is text
            out.append([key, value])
    return out


def from_openai(kwargs: Mapping[str, Any], repeat_last_n: int) -> dict[str, Any]:
    """The settings in effect for an OpenAI request, from the arguments handed to llama-cpp-python
    (``max_tokens`` of None or below 1: until the end or the context is full)."""
    stop = kwargs.get("stop")
    max_tokens = kwargs.get("max_tokens")
    logprobs = kwargs.get("top_logprobs") if kwargs.get("logprobs") is True else (
        kwargs.get("logprobs") if isinstance(kwargs.get("logprobs"), int) else 0)
    out: dict[str, Any] = {
        "temperature": kwargs.get("temperature", DEFAULTS["temperature"]),
        "top_k": kwargs.get("top_k", DEFAULTS["top_k"]),
        "top_p": kwargs.get("top_p", DEFAULTS["top_p"]),
        "min_p": kwargs.get("min_p", DEFAULTS["min_p"]),
        "typical_p": kwargs.get("typical_p", DEFAULTS["typical_p"]),
        "repeat_last_n": repeat_last_n,
        "repeat_penalty": kwargs.get("repeat_penalty", DEFAULTS["repeat_penalty"]),
        "presence_penalty": kwargs.get("presence_penalty", DEFAULTS["presence_penalty"]),
        "frequency_penalty": kwargs.get("frequency_penalty", DEFAULTS["frequency_penalty"]),
        "mirostat": kwargs.get("mirostat_mode", DEFAULTS["mirostat"]),
        "mirostat_tau": kwargs.get("mirostat_tau", DEFAULTS["mirostat_tau"]),
        "mirostat_eta": kwargs.get("mirostat_eta", DEFAULTS["mirostat_eta"]),
        "stop": [stop] if isinstance(stop, str) else list(stop or ()),
        "n_predict": max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else -1,
        "ignore_eos": kwargs.get("ignore_eos", False) is True,
        "stream": kwargs.get("stream", False) is True,
        "logit_bias": logit_bias_pairs(kwargs.get("logit_bias")),
        "n_probs": logprobs or 0,
        "grammar": kwargs.get("grammar") or "",
    }
    if kwargs.get("seed") is not None:
        out["seed"] = kwargs["seed"]
    return {k: v for k, v in out.items() if v is not None}
