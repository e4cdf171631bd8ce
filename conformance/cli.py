"""``llama-router-conformance``: the conformance suite against a router, from wherever the harness
is installed, with its per-clause report (Markdown and junit XML) written at the end.

    llama-router-conformance                      # the reference router
    llama-router-conformance --router-bin PATH    # a llama-server binary in router mode
    llama-router-conformance -- -k downloads -x   # anything after -- goes to pytest

The same as ``pytest --pyargs <this package> [--router-bin PATH]``: the suite is a pytest plugin
(``conformance.plugin``). The tiny GGUF models it loads are generated on the first run and
cached ($LLAMA_ROUTER_HARNESS_CACHE, else ~/.cache/llama-router-harness).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .plugin import PACKAGE
from .process import CHECKOUT, ROOT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="llama-router-conformance",
        description="Check a llama-server router (router mode: one child per model, requests "
                    "routed by their \"model\") over loopback HTTP with tiny generated models, "
                    "clause by clause. Exit status: pytest's (0: every clause passed or is a "
                    "known upstream deviation).",
        epilog="Arguments after -- go to pytest as they are, e.g. -- -k policies -x, "
               "or -- -n auto with pytest-xdist installed.")
    p.add_argument("--router-bin", metavar="PATH",
                   default=os.environ.get("LLAMA_SERVER_BIN_PATH"),
                   help="a llama-server binary to check (default: $LLAMA_SERVER_BIN_PATH, else "
                        "the reference router that comes with the harness)")
    p.add_argument("--child-cmd", metavar="TEMPLATE",
                   help="reference router only: run its children with this command (interop), "
                        "e.g. 'llama-server -m $model --port $port --host $host'")
    p.add_argument("--reports", metavar="DIR", type=Path,
                   help="where conformance-<target>.md and .xml go (default: ./reports, or the "
                        "checkout's reports/)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="after --: more pytest arguments")
    a = p.parse_args(argv)
    if a.router_bin and not (os.path.isfile(a.router_bin) and os.access(a.router_bin, os.X_OK)):
        p.error(f"--router-bin {a.router_bin}: no executable file there")
    rest = a.pytest_args[1:] if a.pytest_args[:1] == ["--"] else a.pytest_args
    # (the root: test ids read conformance/test_api.py::..., installed or not)
    args = ["--pyargs", PACKAGE, "-p", "no:cacheprovider", f"--rootdir={ROOT}", *rest]
    if a.router_bin:
        args.append(f"--router-bin={os.path.abspath(a.router_bin)}")
    if a.child_cmd:
        args.append(f"--child-cmd={a.child_cmd}")
    reports = (a.reports or (ROOT / "reports" if CHECKOUT else Path.cwd() / "reports")).resolve()
    args.append(f"--conformance-reports={reports}")
    target = "llama-server" if a.router_bin else ("interop" if a.child_cmd else "refimpl")
    print(f"llama-router-conformance: the report goes to "
          f"{reports / f'conformance-{target}.md'} and .xml", file=sys.stderr, flush=True)
    # pytest in this process's place (nothing is left to outlive it): a fresh interpreter, as
    # here the plugin's modules are imported already and pytest could not rewrite their asserts
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])


if __name__ == "__main__":
    sys.exit(main())
