"""Our child's answers have llama-server's shapes (``conformance/wire.py``): the comparison
itself, and our child against the shapes recorded from llama-server's child."""

from __future__ import annotations

import json

import httpx
import pytest

from conformance import wire
from fixtures.tiny_models import build_models_dir, default_cache_dir
from refimpl.router.processes import free_port


def test_a_shape_keeps_keys_in_order_and_types_not_values() -> None:
    assert wire.shape({"b": 1, "a": [1, 2.5, "x"], "c": None, "d": True}) == {
        "b": "number", "a": ["number", "string"], "c": "null", "d": "bool"}


def test_differences_name_the_path_of_each() -> None:
    theirs = {"choices": [{"delta": {"role": "string", "content": "null"}}], "id": "string"}
    ours = {"choices": [{"delta": {"role": "string"}}], "id": "number", "x": "bool"}
    assert sorted(wire.differences(ours, theirs)) == sorted([
        ".x: only in ours", ".choices[0].delta.content: missing in ours",
        '.id: ours "number", theirs "string"'])
    assert wire.differences({"a": "string", "b": "null"}, {"b": "null", "a": "string"}) == [
        "(top): keys in another order"]
    assert wire.differences(theirs, theirs) == []


def test_a_stream_without_its_done_differs() -> None:
    text = 'data: {"a": 1}\n\ndata: {"a": 2}\n\ndata: [DONE]\n\n'
    full = wire.stream_shape(text)
    assert full == [{"a": "number"}, "[DONE]"]
    cut = wire.stream_shape(text.replace("data: [DONE]\n\n", ""))
    assert wire.differences({"stream": cut}, {"stream": full}) != []


@pytest.mark.parametrize("config", wire.CONFIGURATIONS, ids=lambda c: c.name)
def test_our_child_answers_with_the_recorded_shapes_of_llama_servers(
        config: wire.Configuration) -> None:
    """Against ``conformance/wire_llama_server.json`` (``python -m conformance.wire --router-bin
    PATH --record``), in each configuration: every request, and any difference is one
    ``EXPLAINED`` says why."""
    recorded = wire.recorded_shapes(json.loads(wire.RECORDED.read_text()))
    assert set(recorded) == {c.name for c in wire.CONFIGURATIONS}
    model = str(build_models_dir(default_cache_dir())[wire.MODEL].path)
    port = free_port()
    ours = wire.serve(wire.ours_command(model, port, config.flags), port, config.asks)
    found = wire.compare(ours, recorded[config.name])
    assert set(found) == {ask.name for ask in config.asks}
    unexplained = {name: [d for d in diffs if (name, d) not in wire.EXPLAINED]
                   for name, diffs in found.items()}
    assert {k: v for k, v in unexplained.items() if v} == {}


def test_answer_shape_reads_json_streams_and_other_bodies() -> None:
    json_reply = httpx.Response(200, json={"a": [1]})
    assert wire.answer_shape(json_reply) == {"status": 200, "type": "application/json",
                                             "body": {"a": ["number"]}}
    sse = httpx.Response(200, headers={"content-type": "text/event-stream"},
                         content=b'data: {"x": "y"}\n\ndata: [DONE]\n\n')
    assert wire.answer_shape(sse)["body"] == {"stream": [{"x": "string"}, "[DONE]"]}
    text = httpx.Response(501, headers={"content-type": "text/plain"}, content=b"no")
    assert wire.answer_shape(text) == {"status": 501, "type": "text/plain", "body": "<text/plain>"}


def test_metrics_text_shapes_as_its_names_and_types_in_order() -> None:
    text = ("# HELP llamacpp:a A\n# TYPE llamacpp:a counter\nllamacpp:a 1\n"
            "# HELP llamacpp:b B\n# TYPE llamacpp:b gauge\nllamacpp:b 0.5\n")
    reply = httpx.Response(200, headers={"content-type": "text/plain; version=0.0.4"},
                           content=text.encode())
    shape = wire.answer_shape(reply)
    assert shape == {"status": 200, "type": "text/plain",
                     "body": {"metrics": {"llamacpp:a": "counter", "llamacpp:b": "gauge"}}}
    other = wire.metrics_shape(text.replace("gauge", "counter"))
    assert wire.differences({"metrics": other}, shape["body"]) == [
        '.metrics.llamacpp:b: ours "counter", theirs "gauge"']
