"""ROUTER.md section 7, one test per policy (queue limit, pin, idle TTL, per-model concurrency),
against the reference router started from its command. llama-server has none of them: on a
``--router-bin`` target each test is reported n/a (skipped), as the other switches of the
reference router are (``test_sources.py``).

Each test ends by checking the router's own trace (``--trace``, written when it stops) against
every guarantee, section 7's included (``properties.invariants.check_all``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from properties.invariants import check_all
from refimpl.core.commands import Listed
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.router.tracefile import read_trace

from .routers import Router, Target

pytestmark = pytest.mark.live
M, N = "tiny-xs", "tiny-m"  # the two smallest models


@pytest.fixture(autouse=True)
def reference_only(target: Target) -> None:
    if target.binary:
        pytest.skip("ROUTER.md 7's policies are the reference router's (llama-server has none)")


def preset(tmp_path: Path, tiny_models: Any, **sections: dict[str, str]) -> str:
    """A preset file: one section per model, each a tiny model with the keys given."""
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]\nmodel = {tiny_models[M].path}")
        lines += [f"{key} = {value}" for key, value in keys.items()]
    path = tmp_path / "policies.ini"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def trace_holds(router: Router, trace: Path, **config: Any) -> None:
    """Stop the router and check what its core did against every guarantee."""
    router.stop()
    entries = read_trace(trace)
    names = {at.what.model for at in entries if hasattr(at.what, "model")} - {None, "*"}
    names |= {view.name for at in entries if isinstance(at.what, Listed)
              for view in at.what.models}
    specs = tuple(ModelSpec(n, **config.pop(n, {})) for n in sorted(names))
    violations = check_all(entries, RouterConfig(models=specs, **config))
    assert not violations, "\n".join(map(str, violations))


def test_queue_limit_answers_429_with_retry_after(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    """Section 7, queue limit: with --queue-max 1 and one request waiting (M busy, one slot),
    the next request is answered 429 with Retry-After; the waiting one is served."""
    trace = tmp_path / "trace.pickle"
    router = start_router("--models-max", "1", "--queue-max", "1", "--trace", str(trace))
    assert router.chat(M).status_code == 200
    held = router.hold(M, tiny_models[M].path)
    waiting = router.send(N)
    refused = router.chat(N)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == 429
    assert held.release()[0] == 200
    assert waiting.join()[0] == 200
    trace_holds(router, trace, models_max=1, queue_max=1)


def test_pinned_model_stays_and_what_it_crowds_out_gets_503(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    """Section 7, pin: with one slot held by a pinned model, a request for another model is
    answered 503 at once, naming the pinned one, which stays loaded; GET /models shows it."""
    trace = tmp_path / "trace.pickle"
    router = start_router("--models-max", "1", "--trace", str(trace), "--models-preset",
                          preset(tmp_path, tiny_models, kept={"pin": "true"}))
    assert router.chat("kept").status_code == 200
    refused = router.chat(N)
    assert refused.status_code == 503, refused.text
    assert "kept" in refused.json()["error"]["message"]
    listed = router.models()["kept"]
    assert listed["pinned"] is True and listed["status"]["value"] == "loaded", listed
    assert "pinned" not in router.models()[N]
    trace_holds(router, trace, models_max=1, kept={"pin": True})


def test_idle_ttl_unloads_a_model_not_failed(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    """Section 7, idle TTL: a model idle for its preset ttl is unloaded, and not reported as
    failed; GET /models shows its ttl."""
    trace = tmp_path / "trace.pickle"
    router = start_router("--trace", str(trace), "--models-preset",
                          preset(tmp_path, tiny_models, brief={"ttl": "1"}))
    assert router.models()["brief"]["ttl"] == 1.0
    assert router.chat("brief").status_code == 200
    router.events.wait_for("brief", "unloaded", timeout=30)
    status = router.models()["brief"]["status"]
    assert status["value"] == "unloaded" and not status.get("failed"), status
    trace_holds(router, trace, brief={"ttl": 1.0})


def test_concurrency_keeps_a_second_request_until_the_first_ends(
        start_router: Callable[..., Router], tiny_models: Any, tmp_path: Path) -> None:
    """Section 7, per-model concurrency: with concurrency = 1, a second request for the model
    waits while the first is in flight (the router's trace shows it forwarded only after the
    first ended), and both are served."""
    trace = tmp_path / "trace.pickle"
    router = start_router("--trace", str(trace), "--models-preset",
                          preset(tmp_path, tiny_models, single={"concurrency": "1"}))
    assert router.models()["single"]["concurrency"] == 1
    assert router.chat("single").status_code == 200
    held = router.hold("single", tiny_models[M].path)
    second = router.send("single")
    assert held.release()[0] == 200
    assert second.join()[0] == 200
    trace_holds(router, trace, single={"concurrency": 1})
