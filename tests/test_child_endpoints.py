"""The endpoints llama-server serves only when asked (``--embeddings``, ``--metrics``) or until told
not to (``--no-slots``): their flags and variables, llama-server's request checks, and the live
child's answers with the flags on. Their shapes against llama-server's own are in
``tests/test_wire.py``."""

from __future__ import annotations

import base64
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from refimpl.child import embeddings
from refimpl.child.cli import parse_options
from refimpl.child.metrics import Metrics
from refimpl.child.timings import Generation
from test_child import HTTP_TIMEOUT, REPO, deps, running_child  # noqa: F401 - deps: a fixture


# -- flags and variables ---------------------------------------------------------------------------


def test_the_flags_turn_the_endpoints_on_and_off() -> None:
    off = parse_options(["-m", "m.gguf"], env={})
    assert (off.embeddings, off.metrics, off.slots, off.pooling) == (False, False, True, None)
    on = parse_options(["-m", "m.gguf", "--embedding", "--metrics", "--no-slots",
                        "--pooling", "mean"], env={})
    assert (on.embeddings, on.metrics, on.slots, on.pooling) == (True, True, False, "mean")
    assert on.no_effect == ()


@pytest.mark.parametrize("value", ["0", "false", "off", "disabled"])
def test_a_false_slots_variable_turns_slots_off_and_the_command_line_wins(value: str) -> None:
    env = {"LLAMA_ARG_ENDPOINT_SLOTS": value, "LLAMA_ARG_EMBEDDINGS": "1",
           "LLAMA_ARG_ENDPOINT_METRICS": "true"}
    opts = parse_options(["-m", "m.gguf"], env=env)
    assert (opts.slots, opts.embeddings, opts.metrics) == (False, True, True)
    assert parse_options(["-m", "m.gguf", "--slots"], env=env).slots is True


def test_a_false_variable_leaves_a_flag_without_negation_off() -> None:
    """llama.cpp sets a plain switch from its variable only when the value is true."""
    opts = parse_options(["-m", "m.gguf"], env={"LLAMA_ARG_EMBEDDINGS": "0",
                                                "LLAMA_ARG_ENDPOINT_METRICS": "false"})
    assert (opts.embeddings, opts.metrics) == (False, False)


def test_the_flags_import_nothing_new_when_off() -> None:
    code = ("import sys\n"
            "from refimpl.child.announcer import Announcer\n"
            "from refimpl.child.app import build_app\n"
            "from refimpl.child.cli import parse_options\n"
            "from refimpl.child.runtime import ChildRuntime\n"
            "build_app(ChildRuntime(parse_options(['-m', 'm.gguf'], env={}), "
            "Announcer.silent()))\n"
            "print(sorted(m for m in sys.modules if m in ('refimpl.child.embeddings', "
            "'refimpl.child.metrics')))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- embeddings: llama-server's request checks -----------------------------------------------------


def _refusal(body: dict[str, Any], oai: bool = False, pooled: bool = True) -> str:
    with pytest.raises(embeddings.EmbeddingError) as info:
        embeddings.parse(body, oai, pooled)
    assert info.value.status == 400
    return info.value.message


def test_inputs_split_as_llama_servers_do() -> None:
    assert embeddings.parse({"input": "a"}, False, True).prompts == (("a",),)
    assert embeddings.parse({"input": [1, 2]}, False, True).prompts == ((1, 2),)
    assert embeddings.parse({"input": [1, "a"]}, False, True).prompts == ((1, "a"),)
    assert embeddings.parse({"input": ["a", [3]]}, False, True).prompts == (("a",), (3,))
    assert embeddings.parse({"input": [{"prompt_string": "x"}]}, False, True).prompts == (
        ("x",),)
    assert embeddings.parse({"input": {"content": [{"type": "text", "text": "y"}]}},
                            False, True).prompts == (("y",),)
    # "content" is not OpenAI's: the native answer, even on /v1/embeddings
    assert embeddings.parse({"content": "a"}, True, True).oai is False


def test_bad_inputs_are_refused_with_llama_servers_messages() -> None:
    assert _refusal({}) == '"input" or "content" must be provided'
    assert _refusal({"input": []}) == '"input" must not be empty'
    assert _refusal({"input": 5}).startswith('"prompt" elements must be a string')
    assert _refusal({"input": {"content": "x"}}) == '"content" must be an array'
    assert _refusal({"input": "a", "encoding_format": "x"}).startswith("The format to return")
    # OpenAI's form needs one vector per input: refused first, whatever the body
    assert _refusal({}, oai=True, pooled=False).startswith("Pooling type 'none'")


def test_too_long_inputs_are_refused_in_llama_servers_order() -> None:
    with pytest.raises(embeddings.EmbeddingError) as info:
        embeddings.check_fits([1] * 600, 512, 256)
    assert info.value.status == 500 and "physical batch size" in info.value.message
    with pytest.raises(embeddings.EmbeddingError) as info:
        embeddings.check_fits([1] * 300, 512, 256)
    assert info.value.body()["error"] == {
        "code": 400, "message": info.value.message, "type": "exceed_context_size_error",
        "n_prompt_tokens": 300, "n_ctx": 256}
    embeddings.check_fits([1] * 256, 512, 256)


def test_normalization_is_common_embd_normalize() -> None:
    v = [3.0, -4.0]
    assert embeddings.normalized(v, 2) == pytest.approx([0.6, -0.8])
    assert embeddings.normalized(v, -1) == v
    assert embeddings.normalized(v, 1) == pytest.approx([3 / 7, -4 / 7])
    assert embeddings.normalized(v, 0) == pytest.approx([3 * 32760 / 4, -32760.0])
    assert embeddings.normalized([0.0, 0.0], 2) == [0.0, 0.0]


def test_openai_answers_in_floats_or_base64() -> None:
    ask = embeddings.parse({"input": ["a", "b"], "encoding_format": "base64"}, True, True)
    body = embeddings.answer(ask, [([[1.0, 2.0]], 2), ([[0.5, 0.0]], 3)], "m")
    assert body["model"] == "m" and body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    first = body["data"][0]
    assert list(first) == ["embedding", "index", "object", "encoding_format"]
    assert struct.unpack("<2f", base64.b64decode(first["embedding"])) == (1.0, 2.0)
    native = embeddings.answer(embeddings.parse({"input": "a"}, False, True),
                               [([[1.0]], 1)], "m")
    assert native == [{"index": 0, "embedding": [[1.0]]}]


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_add_up_generations_and_close_the_gauges_window_at_each_scrape() -> None:
    m = Metrics(n_batch=4)
    m.generated(Generation(prompt=[1] * 10, cached=2, started=0.0, first=0.5, last=1.5,
                           predicted=5))
    m.embedded(3, 0.25)
    text = m.scrape(processing=1, deferred=2)
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if not line.startswith("#")}
    assert values["llamacpp:prompt_tokens_total"] == 11
    assert values["llamacpp:prompt_tokens_cached_total"] == 2
    assert values["llamacpp:prompt_seconds_total"] == pytest.approx(0.75)
    assert values["llamacpp:tokens_predicted_total"] == 5
    assert values["llamacpp:tokens_predicted_seconds_total"] == pytest.approx(1.0)
    assert values["llamacpp:n_decode_total"] == math.ceil(8 / 4) + 4 + 1
    assert values["llamacpp:n_tokens_max"] == 15
    assert values["llamacpp:predicted_tokens_seconds"] == pytest.approx(5.0)
    assert (values["llamacpp:requests_processing"], values["llamacpp:requests_deferred"]) == (
        1, 2)
    assert "# TYPE llamacpp:prompt_tokens_total counter" in text
    assert "# TYPE llamacpp:requests_deferred gauge" in text
    again = m.scrape(processing=0, deferred=0)
    assert "llamacpp:predicted_tokens_seconds 0\n" in again
    assert "llamacpp:tokens_predicted_total 5\n" in again


# -- the live child --------------------------------------------------------------------------------


@pytest.mark.live
def test_a_child_with_embeddings_and_metrics_serves_them(deps: Any, tiny_models: Any) -> None:
    model: Path = tiny_models["tiny-xs"].path
    with running_child(model, "--embeddings", "--metrics", "-c", "256", "--temp", "0") as child:
        child.until_ready()
        with deps.Client(base_url=child.url, timeout=HTTP_TIMEOUT) as http:
            props = http.get("/props").json()
            assert props["endpoint_metrics"] is True and props["endpoint_slots"] is True
            tokens = http.post("/tokenize", json={"content": "hello",
                                                  "add_special": True}).json()["tokens"]
            one = http.post("/embedding", json={"input": "hello"}).json()
            assert len(one) == 1 and len(one[0]["embedding"]) == len(tokens)  # unpooled
            many = http.post("/embeddings", json={"input": ["hello", [1, 2, 3]]}).json()
            assert [e["index"] for e in many] == [0, 1]
            flat = [v for row in many[0]["embedding"] for v in row]
            assert flat == pytest.approx([v for row in one[0]["embedding"] for v in row],
                                         abs=1e-4)
            assert len(many[1]["embedding"]) == 3
            refused = http.post("/v1/embeddings", json={"input": "hello"})
            assert refused.status_code == 400, refused.text
            # generation still works on a context made with embeddings
            done = http.post("/completion", json={"prompt": "hello", "n_predict": 3})
            assert done.status_code == 200 and done.json()["tokens_predicted"] == 3
            scraped = http.get("/metrics")
            assert scraped.headers["content-type"] == "text/plain; version=0.0.4"
            values = {line.split()[0]: float(line.split()[1])
                      for line in scraped.text.splitlines() if not line.startswith("#")}
            assert values["llamacpp:tokens_predicted_total"] == 3
            assert values["llamacpp:prompt_tokens_total"] >= len(tokens) + len(tokens) + 3


@pytest.mark.live
def test_a_pooling_child_answers_openai_embeddings_and_slots_off_is_501(
        deps: Any, tiny_models: Any) -> None:
    model: Path = tiny_models["tiny-xs"].path
    with running_child(model, "--embeddings", "--pooling", "mean", "--no-slots") as child:
        child.until_ready()
        with deps.Client(base_url=child.url, timeout=HTTP_TIMEOUT) as http:
            body = http.post("/v1/embeddings", json={"input": ["hello", "world"]}).json()
            assert [d["index"] for d in body["data"]] == [0, 1]
            vector = body["data"][0]["embedding"]
            assert math.fsum(v * v for v in vector) == pytest.approx(1.0, abs=1e-4)
            assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
            slots = http.get("/slots")
            assert slots.status_code == 501
            assert slots.json()["error"]["type"] == "not_supported_error"
            assert http.get("/props").json()["endpoint_slots"] is False
            assert http.get("/metrics").status_code == 501
