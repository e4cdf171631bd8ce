"""Where the router's memory goes before it serves: resident memory after each layer it imports.

    python bench/router_memory.py

Each layer is imported in a fresh interpreter on top of the ones before it, in the order the
router imports them, and its figure is what the process's resident memory (VmRSS) grew by; then
the Python objects the router's own modules allocate (tracemalloc). Run it with the interpreter the router runs
with: a venv's gives the router's figures; an interpreter whose site-packages runs ``.pth``
files at start-up starts bigger (the first row). The peak under load is ``bench/load.py``'s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = [
    ("asyncio (with ssl and libcrypto)", "asyncio"),
    ("anyio", "anyio"),
    ("uvicorn (with click, logging.config, multiprocessing)", "uvicorn"),
    ("Starlette", "starlette.applications, starlette.routing"),
    ("httptools", "httptools, uvicorn.protocols.http.httptools_impl"),
    ("msgspec", "msgspec"),
    ("the router's own modules", "refimpl.router.main"),
]

RSS = """
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
"""


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", RSS + code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        sys.exit(f"router_memory: a measurement failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=(__doc__ or "").split("\n", 1)[1]).parse_args(argv)
    if not Path("/proc/self/status").exists():
        sys.exit("router_memory: reads /proc/self/status, which this system does not have")
    print("| layer | MiB | total MiB |\n|---|---|---|")
    where = "a venv" if sys.prefix != sys.base_prefix else "not a venv"
    print(f"| the interpreter started (Python {sys.version.split()[0]}, {where}) | | "
          f"{float(run('print(rss())')):.1f} |")
    before: list[str] = []
    for label, modules in LAYERS:
        code = (f"import {', '.join(before)}\n" if before else "") + \
            f"base = rss()\nimport {modules}\nprint(rss() - base, rss())"
        grew, total = (float(x) for x in run(code).split())
        print(f"| {label} | {grew:.1f} | {total:.1f} |")
        before.append(modules)
    *rest, router = before  # the router's own modules last
    traced = run(f"import {', '.join(rest)}\nimport tracemalloc\ntracemalloc.start()\n"
                 f"import {router}\nprint(tracemalloc.get_traced_memory()[0] / 1024 / 1024)")
    print(f"\nPython objects the router's own modules allocate (tracemalloc): {float(traced):.1f} "
          "MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
