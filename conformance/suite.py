"""Black-box conformance, the suite's fixtures and report (registered by ``conformance.plugin``
when a run checks the suite): start a router from a command, talk to it over loopback HTTP.

Default target: the reference router (``python -m refimpl``) with its llama-cpp-python children.
``--router-bin PATH`` (or ``LLAMA_SERVER_BIN_PATH``) targets a llama-server binary in router mode;
``--child-cmd TEMPLATE`` runs the reference router with other children (interop: llama-server's).
Every router and child process a test starts is stopped, and checked gone, by pid.
Each run writes its per-clause report to reports/conformance-<target>.{md,xml} (in a checkout,
its reports/ folder; installed, the current folder's, or ``--conformance-reports DIR``);
``python -m conformance.report`` merges them into docs/CONFORMANCE.md.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .deviations import DEVIATIONS
from .process import CHECKOUT
from .routers import ROOT, Router, Target

HERE = Path(__file__).resolve().parent  # the suite's tests are the modules of this folder
# The tiny GGUF models fixture (``tiny_models``); the end-of-run leak check.
pytest_plugins = ["fixtures.pytest_fixtures", "fixtures.leakcheck"]


def _target(config: pytest.Config) -> Target:
    return Target(config.getoption("--router-bin"), config.getoption("--child-cmd"))


MARKERS = ("live: needs real child processes and loopback HTTP",
           "slow: takes more than a few seconds",
           "thrash: thrash and starvation scenarios (select with -k thrash)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "deviation(id): replays an upstream deviation "
                            "(conformance/deviations.py); xfail(strict=True) on the targets "
                            "it names")
    for line in MARKERS:  # the checkout's pyproject.toml declares them too
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    name = _target(config).name
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            # the report's clause travels with each test's report (under pytest-xdist, the
            # controller that writes the report has no items of its own)
            item.user_properties.append(("clause", _clause(getattr(item, "obj", None))))
        for mark in item.iter_markers("deviation"):
            found = DEVIATIONS[mark.args[0]]
            if name in found.targets:
                item.add_marker(pytest.mark.xfail(strict=True, reason=found.reason))


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    return _target(request.config)


@pytest.fixture
def start_router(target: Target, tiny_models: Any, tmp_path: Path
                 ) -> Iterator[Callable[..., Router]]:
    """Start a router on the tiny models: ``start_router("--models-max", "1")``."""
    routers: list[Router] = []

    def start(*args: str, models_dir: Path | None = None, api_key: str | None = None) -> Router:
        flags = ["--models-dir", str(models_dir or tiny_models.root), *args]
        if api_key:
            flags += ["--api-key", api_key]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        router = Router(target, flags, tmp_path / f"router-{len(routers)}.log", headers)
        routers.append(router)
        return router

    yield start
    leftovers = []
    for router in routers:
        leftovers += router.stop()
    assert not leftovers, f"child processes outlived their router: {leftovers}"


# -- the per-clause report: a markdown table and junit XML under reports/ -------------------------

_RESULTS: dict[str, dict[str, Any]] = {}

OUTCOMES = ("passed", "failed", "xfailed", "skipped")  # xfailed: a known upstream deviation


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    properties = dict(report.user_properties)
    if "clause" not in properties:  # not a test of this suite
        return
    entry = _RESULTS.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0,
                                                "detail": ""})
    entry["seconds"] += report.duration
    entry.setdefault("clause", properties["clause"])
    if report.failed:
        entry["outcome"] = "failed"
        crash = getattr(report.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else str(report.longrepr or "")
        entry["detail"] = (text.strip().splitlines() or [""])[0][:200]
    elif hasattr(report, "wasxfail") and entry["outcome"] != "failed":
        entry["outcome"] = "xfailed"
        entry["detail"] = str(report.wasxfail)
    elif report.skipped and entry["outcome"] != "failed":
        entry["outcome"] = "skipped"
        entry["detail"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""


def _clause(test: object) -> str:
    """The clause a test checks: the first paragraph of its docstring, on one line."""
    doc = getattr(test, "__doc__", None) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _version(target: Target) -> str:
    """What ``llama-server --version`` says (the binary checked, or the interop children's)."""
    words = (target.binary or target.child_cmd or "").split()
    if not words or "llama-server" not in Path(words[0]).name:
        return ""
    try:
        run = subprocess.run([words[0], "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = [line for line in (run.stdout + run.stderr).splitlines()
             if line.startswith("version:")]
    return found[0].removeprefix("version:").strip() if found else ""


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _RESULTS or os.environ.get("ROUTER_MUTANT"):  # a bug-zoo mutant's run reports nothing
        return
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller writes it
        return
    import xml.etree.ElementTree as ET

    target = _target(session.config).name
    docs = {nodeid: r["clause"] for nodeid, r in _RESULTS.items()}
    chosen = session.config.getoption("--conformance-reports")
    out = Path(chosen) if chosen else (ROOT / "reports" if CHECKOUT else Path.cwd() / "reports")
    out.mkdir(parents=True, exist_ok=True)
    counts = {k: sum(1 for r in _RESULTS.values() if r["outcome"] == k) for k in OUTCOMES}
    lines = [f"# Conformance report: {target}", "",
             f"{counts['passed']} passed, {counts['failed']} failed, {counts['xfailed']} "
             f"known upstream deviations (xfail), {counts['skipped']} skipped (not applicable)",
             "", "| clause | test | result | note |", "|---|---|---|---|"]
    suite = ET.Element("testsuite", name=f"conformance-{target}", tests=str(len(_RESULTS)),
                       failures=str(counts["failed"]),
                       skipped=str(counts["skipped"] + counts["xfailed"]))
    version = _version(_target(session.config))
    if version:
        ET.SubElement(ET.SubElement(suite, "properties"), "property", name="version",
                      value=version)
    for nodeid, r in sorted(_RESULTS.items()):
        module, _, name = nodeid.partition("::")
        clause = docs.get(nodeid) or name.replace("test_", "").replace("_", " ")
        note = r["detail"].replace("|", "/")
        lines.append(f"| {clause} | `{name}` | {r['outcome']} | {note} |")
        case = ET.SubElement(suite, "testcase", classname=module, name=name,
                             time=f"{r['seconds']:.3f}", clause=clause)
        if r["outcome"] == "failed":
            ET.SubElement(case, "failure", message=r["detail"])
        elif r["outcome"] == "xfailed":
            ET.SubElement(case, "skipped", type="pytest.xfail", message=r["detail"])
        elif r["outcome"] == "skipped":
            ET.SubElement(case, "skipped", message=r["detail"])
    (out / f"conformance-{target}.md").write_text("\n".join(lines) + "\n")
    ET.ElementTree(suite).write(out / f"conformance-{target}.xml", encoding="utf-8",
                                xml_declaration=True)
