"""Where hypothesis keeps the failing examples it found, so the next run replays them first.

``ROUTER_EXAMPLE_DB`` picks it for the ``dev`` and ``nightly`` profiles (``conftest.py``):

- unset: hypothesis's own directory, ``.hypothesis/examples`` (one machine);
- a directory path: that directory (a checkout's neighbours, or a shared mount);
- ``redis://HOST:PORT/DB``: a Redis server that a fleet of machines shares, so a counterexample
  one nightly machine found is tried first on every other; each machine also keeps its own copy
  in ``.hypothesis/examples``, so it still replays it when Redis is out of reach.

The ``ci`` profile is derandomized and so keeps no database (hypothesis forbids both): a red CI
run replays from its seed. The ``zoo`` and ``mutation`` profiles keep none on purpose.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis.configuration import storage_directory
from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    MultiplexedDatabase,
)

ENV = "ROUTER_EXAMPLE_DB"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def local_directory() -> Path:
    """Hypothesis's default example directory (``.hypothesis/examples``)."""
    return storage_directory("examples", intent_to_write=False).path


def example_database(value: str | None, *, local: Path | None = None) -> ExampleDatabase | None:
    """The database ``value`` (``ROUTER_EXAMPLE_DB``'s format) names; None for hypothesis's
    default. ``local`` is where a Redis database keeps this machine's copy (default:
    :func:`local_directory`)."""
    if not value:
        return None
    if value.startswith(REDIS_SCHEMES):
        # Only a fleet needs the redis client (the `dask` extra brings it).
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase

        shared = RedisExampleDatabase(redis.Redis.from_url(value))
        return MultiplexedDatabase(DirectoryBasedExampleDatabase(local or local_directory()),
                                   shared)
    return DirectoryBasedExampleDatabase(value)
