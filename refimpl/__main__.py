"""``python -m refimpl`` and the ``refimpl-router`` script: run the reference router."""

import sys

# Imported by the router's libraries if installed, never run by the router: httpx's command-line
# client (rich, click, pygments), trio (httpcore's locks for trio; the router runs on asyncio) and
# watchfiles (uvicorn's --reload).
# Marked absent, each library takes its own fallback: 11 MiB less of the router's memory
# (docs/BENCHMARKS.md, "Load"). Here, not in the package: tests run the driver on trio.
NEVER_RUN = ("httpx._main", "trio", "watchfiles")


def run(prog: str = "refimpl-router") -> int:
    for name in NEVER_RUN:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from refimpl.router.main import main

    return main(prog=prog)


if __name__ == "__main__":
    sys.exit(run(prog="python -m refimpl"))
