"""The conformance suite as a pytest plugin (the ``pytest11`` entry point of this module's name).

It adds the suite's options to every pytest run in an environment where the harness is installed,
and registers the suite itself (``conformance.suite``: the router fixtures, the upstream
deviations as strict xfails, the end-of-run leak check, the per-clause report) only in a run that
checks the suite: in the harness's checkout, or when the run names the suite's package
(``pytest --pyargs llama_router_harness.conformance``, which ``llama-router-conformance`` runs).
Another project's tests in the same environment get the options and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing here imports the harness's other modules: an entry-point plugin is loaded before any
# conftest.py, and the checkout's applies a bug-zoo mutant ($ROUTER_MUTANT) to the core's modules
# as it is imported; a core module imported before that would keep its correct code.
HERE = Path(__file__).resolve().parent
# The checkout's root (where ``python -m refimpl`` runs), or, installed from the wheel, the
# package folder that holds this one (which has no pyproject.toml).
ROOT = HERE.parent
CHECKOUT = (ROOT / "pyproject.toml").is_file()

SUITE = "conformance.suite"  # the module with the suite's fixtures and hooks
PACKAGE = SUITE.rpartition(".")[0]  # this package's import name


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "llama-server router conformance")
    group.addoption("--router-bin", default=os.environ.get("LLAMA_SERVER_BIN_PATH"),
                    help="a llama-server binary to check instead of the reference router "
                         "(default: $LLAMA_SERVER_BIN_PATH if set)")
    group.addoption("--child-cmd", default=None,
                    help="reference router only: the child command template it should use "
                         "(interop: 'llama-server -m $model --port $port --host $host')")
    group.addoption("--conformance-reports", default=None, metavar="DIR",
                    help="where the per-clause report goes (conformance-<target>.md and .xml; "
                         "default: the checkout's reports/, else ./reports)")


def wanted(config: pytest.Config) -> bool:
    """Whether this run checks the suite: a checkout runs it with the rest of its tests;
    elsewhere, a run that names the suite's package or a path inside it."""
    if CHECKOUT:
        return True
    for arg in config.args:
        name = arg.split("::")[0]
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            return True
        path = Path(name)
        if path.exists() and (path.resolve() == HERE or HERE in path.resolve().parents):
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if wanted(config):
        config.pluginmanager.import_plugin(SUITE)
