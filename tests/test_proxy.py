"""The proxy, as a child sees it (Z20, Z21): the same path and query, no hop-by-hop headers
passed on in either direction, no header twice, the right length.

The children here are FAKES (``fixtures/fake_child.py``) because they echo what reached them
(path, query, headers): no llama-server-compatible endpoint does, so the black-box conformance
suite cannot see a dropped query string. One router serves the module.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conformance.routers import Router, Target

pytestmark = pytest.mark.live

M = "echo"


@pytest.fixture(scope="module")
def router(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    root = tmp_path_factory.mktemp("proxy-models")
    (root / f"{M}.gguf").symlink_to(tiny_models["tiny-xs"].path)
    log = tmp_path_factory.mktemp("proxy-router") / "router.log"
    r = Router(Target(None, "{python} -m fixtures.fake_child"),
               ["--models-dir", str(root), "--models-max", "1"], log)
    try:
        yield r
    finally:
        leftovers = r.stop()
    assert not leftovers, f"children outlived the router: {leftovers}"


def assert_clean_headers(r: httpx.Response) -> None:
    names = Counter(k.decode("latin-1").lower() for k, _ in r.headers.raw)
    assert all(n == 1 for n in names.values()), r.headers.raw
    if "content-length" in names:
        assert int(r.headers["content-length"]) == len(r.content)


@pytest.mark.parametrize("query", ["model=echo&foo=1", "foo=a%20b&model=echo&x=%2F&x=2",
                                   "model=echo&empty=&flag"])
def test_a_get_reaches_the_child_with_its_path_and_query(router: Router, query: str) -> None:
    """Z21: the child sees the same path and query, byte for byte."""
    r = router.client.get(f"/props?{query}")
    assert r.status_code == 200, r.text
    assert r.json()["path"] == f"/props?{query}"
    assert_clean_headers(r)


def test_a_post_keeps_its_query(router: Router) -> None:
    r = router.client.post("/v1/chat/completions?trace=1&n=2", json={"model": M, "messages": []})
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/v1/chat/completions?trace=1&n=2"
    assert_clean_headers(r)


def test_hop_by_hop_headers_stay_on_their_hop(router: Router) -> None:
    """Z20, request side: the client's connection headers are not passed to the child; the
    end-to-end ones are, once each."""
    r = router.client.get(f"/props?model={M}", headers={
        "Connection": "keep-alive", "Keep-Alive": "timeout=5", "TE": "trailers",
        "Proxy-Authorization": "Basic eA==", "X-Request-Id": "abc"})
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert not {"keep-alive", "te", "proxy-authorization"} & set(seen), seen
    assert seen.get("x-request-id") == "abc"
    assert_clean_headers(r)
