"""The trace a live client's view is turned into (``properties/observed.py``): its two readings
of what llama-server sends, and the order it restores between the client's threads."""

from __future__ import annotations

from refimpl.core.config import ModelSpec, RouterConfig

from properties.observed import Observed, check_observed

CONFIG = RouterConfig(models=(ModelSpec("a"), ModelSpec("b")), models_max=1)


def sse(o: Observed, t: float, model: str, **data: object) -> None:
    o.add(t, "sse", model=model, data=data)


def test_an_answer_noted_after_its_childs_exit_came_before_it() -> None:
    """Z9 on a fast router: a is evicted milliseconds after b's first answer ended; the client's
    request thread notes the answer after the SSE thread noted the exit."""
    o = Observed()
    o.add(0.0, "send", req=1, model="a")
    sse(o, 0.01, "a", status="loading")
    sse(o, 0.02, "a", status="loaded")
    sse(o, 0.05, "a", status="unloaded", exit_code=0)  # evicted for a waiting request
    o.add(0.06, "answer", req=1, model="a", status=200)  # noted late: it came from that child
    o.add(0.07, "end", req=1, ok=True)
    assert check_observed(o, CONFIG) == []
    kinds = [kind for _, _, kind, _ in o.in_causal_order()]
    assert kinds == ["send", "sse", "sse", "answer", "end", "sse"]


def test_an_answer_after_a_new_load_keeps_its_place() -> None:
    o = Observed()
    o.add(0.0, "send", req=1, model="a")
    sse(o, 0.01, "a", status="loading")
    sse(o, 0.02, "a", status="loaded")
    sse(o, 0.05, "a", status="unloaded", exit_code=0)  # a thrash: evicted before serving
    sse(o, 0.06, "a", status="loading")
    sse(o, 0.07, "a", status="loaded")
    o.add(0.08, "answer", req=1, model="a", status=200)
    o.add(0.09, "end", req=1, ok=True)
    found = check_observed(o, CONFIG)
    assert [v.guarantee for v in found] == ["no_thrash"], found


def test_a_nonzero_exit_code_without_a_failed_flag_is_a_crash() -> None:
    """llama-server's unloaded event carries the exit code only; it is not an eviction."""
    o = Observed()
    o.add(0.0, "send", req=1, model="a")
    sse(o, 0.01, "a", status="loading")
    sse(o, 0.02, "a", status="unloaded", exit_code=1)
    o.add(0.03, "answer", req=1, model="a", status=500)
    assert check_observed(o, CONFIG) == []
