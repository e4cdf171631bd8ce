"""A short run of the load benchmark (bench/load.py) on real children: 8 clients, 3 models,
models_max 2, 5 seconds. Nothing may be lost, no child may outlive the router, the limit holds in
every sample and in the trace, and the invariants hold on what the clients saw.

It can fail: ``ROUTER_MUTANT=Z3 python -m pytest tests/test_load.py`` (capacity counted without
the loading children) exceeds the limit, ``ROUTER_MUTANT=Z7`` loses requests
(docs/RELIABILITY.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import Settings, run_router, table

pytestmark = [pytest.mark.live]


def test_short_load_run_loses_nothing_and_keeps_the_limit(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    s = Settings(clients=8, models=3, models_max=2, seconds=5, drain=30, progress_every=60)
    result = run_router("refimpl", None, s, tmp_path)
    report = table([result], s) + "\n" + "\n".join(result.violations[:10])
    assert result.failures(s.models_max) == [], report
    assert result.ok >= 10 and result.loads >= 3, report  # it served, and it swapped models
    assert result.peak_children >= 2, report  # the sampler saw the children
    # The router wrote its own trace (--trace) and every invariant held on it.
    assert result.router_trace_items > 0 and result.router_violations == [], report
