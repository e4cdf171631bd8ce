"""Black-box conformance: start a router from a command, talk to it over loopback HTTP.

Default target: the reference router (``python -m refimpl``) with its llama-cpp-python children.
``--router-bin PATH`` (or ``LLAMA_SERVER_BIN_PATH``) targets a llama-server binary in router mode.
Every router and child process a test starts is stopped, and checked gone, by pid.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from fixtures.procs import alive, children_of
from properties.observed import Observed, check_observed
from refimpl.core.config import ModelSpec, RouterConfig
from refimpl.router.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance")
    group.addoption("--router-bin", default=os.environ.get("LLAMA_SERVER_BIN_PATH"),
                    help="a llama-server binary to check instead of the reference router")
    group.addoption("--child-cmd", default=None,
                    help="reference router only: the child command template it should use")


@dataclass
class Target:
    binary: str | None  # None: the reference router
    child_cmd: str | None

    @property
    def name(self) -> str:
        return "llama-server" if self.binary else "refimpl"

    def command(self, port: int, args: list[str]) -> list[str]:
        if self.binary:
            return [self.binary, "--host", "127.0.0.1", "--port", str(port), *args]
        extra = ["--child-cmd", self.child_cmd] if self.child_cmd else []
        return [sys.executable, "-m", "refimpl", "--host", "127.0.0.1", "--port", str(port),
                *extra, *args]


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    return Target(request.config.getoption("--router-bin"),
                  request.config.getoption("--child-cmd"))


@dataclass
class Events:
    """``/models/sse`` as a client sees it: (seconds since start, message) pairs."""

    items: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def statuses(self, model: str) -> list[str]:
        with self.lock:
            return [m["data"].get("status") for _, m in self.items
                    if m.get("model") == model and "status" in m.get("data", {})]

    def wait_for(self, model: str, status: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if status in self.statuses(model):
                return
            time.sleep(0.02)
        raise AssertionError(f"{model} never became {status}; saw {self.statuses(model)}")


class Router:
    """One router process for one test."""

    def __init__(self, target: Target, args: list[str], log_path: Path,
                 headers: dict[str, str] | None = None) -> None:
        self.headers = headers or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(target.command(self.port, args), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=ROOT, start_new_session=True)
        self.seen_children: set[int] = set()
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_children, daemon=True)
        self._watch.start()
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(120.0, connect=5.0))
        self.events = Events()
        self.observed = Observed()
        self._req = itertools.count(1)
        self._wait_healthy()
        self.t0 = time.monotonic()
        self._sse = threading.Thread(target=self._listen, daemon=True)
        self._sse.start()
        time.sleep(0.2)  # let the subscription start: there is no replay

    def _watch_children(self) -> None:
        while not self._stop.is_set():
            self.seen_children |= children_of(self.proc.pid)
            time.sleep(0.05)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"router not healthy after 60 s:\n{self.log()}")

    def _listen(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(None, connect=5.0)) as c, \
                    c.stream("GET", self.url + "/models/sse", headers=self.headers) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        message = json.loads(line[6:])
                        t = time.monotonic() - self.t0
                        with self.events.lock:
                            self.events.items.append((t, message))
                            if "status" in message.get("data", {}):
                                self.observed.add(t, "sse", model=message["model"],
                                                  data=message["data"])
        except (httpx.HTTPError, ValueError):
            pass

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def models(self) -> dict[str, dict[str, Any]]:
        data = self.client.get("/models", headers=self.headers).json()["data"]
        return {m["id"]: m for m in data}

    def status(self, model: str) -> str:
        value: str = self.models()[model]["status"]["value"]
        return value

    def chat(self, model: str, content: str = "hi", max_tokens: int = 4, **extra: Any
             ) -> httpx.Response:
        return self.client.post("/v1/chat/completions", headers=self.headers, json={
            "model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, **extra})

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, kind: str, **data: Any) -> None:
        """Record a test's own action (``unload``, ``crash``) in the observed trace."""
        with self.events.lock:
            self.observed.add(self.now(), kind, **data)

    def tracked(self, model: str, max_tokens: int = 4, stream: bool = False,
                timeout: float = 120.0) -> tuple[int, str]:
        """A chat request recorded in the observed trace: (status, body or error text)."""
        req = next(self._req)
        self.note("send", req=req, model=model)
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": max_tokens, "stream": stream}
        try:
            with httpx.Client(base_url=self.url, headers=self.headers,
                              timeout=httpx.Timeout(timeout, connect=5.0)) as client, \
                    client.stream("POST", "/v1/chat/completions", json=body) as r:
                self.note("answer", req=req, model=model, status=r.status_code)
                text = r.read().decode(errors="replace")
                ok = r.status_code < 400 and (not stream or "[DONE]" in text)
                if r.status_code < 400:
                    self.note("end", req=req, ok=ok)
                return r.status_code, text
        except httpx.HTTPError as exc:
            self.note("answer", req=req, model=model, status=599, message=str(exc))
            return 599, str(exc)

    def check(self, models_max: int) -> None:
        """The invariants on what this test saw (after letting late SSE events arrive)."""
        time.sleep(0.3)
        names = tuple(self.models())
        config = RouterConfig(models=tuple(ModelSpec(n) for n in names), models_max=models_max)
        with self.events.lock:
            violations = check_observed(self.observed, config)
        assert not violations, "\n".join(map(str, violations)) + "\n" + self.log()

    def stop(self) -> list[int]:
        """SIGTERM the router, then make sure no child outlives it; returns leftover pids."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._stop.set()
        self._watch.join(timeout=2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(p) for p in self.seen_children):
            time.sleep(0.05)
        leftovers = [p for p in self.seen_children if alive(p)]
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        return leftovers


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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "conformance/" not in report.nodeid.replace("\\", "/"):
        return
    entry = _RESULTS.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0,
                                                "detail": ""})
    entry["seconds"] += report.duration
    if report.failed:
        entry["outcome"] = "failed"
        entry["detail"] = str(report.longrepr).splitlines()[-1][:200] if report.longrepr else ""
    elif report.skipped and entry["outcome"] != "failed":
        entry["outcome"] = "skipped"
        entry["detail"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _RESULTS:
        return
    import xml.etree.ElementTree as ET

    target = "llama-server" if session.config.getoption("--router-bin") else "refimpl"
    docs = {item.nodeid: (item.obj.__doc__ or "").strip().splitlines()[0]  # type: ignore[attr-defined]
            if getattr(item, "obj", None) is not None and item.obj.__doc__ else ""  # type: ignore[attr-defined]
            for item in session.items}
    out = ROOT / "reports"
    out.mkdir(exist_ok=True)
    counts = {k: sum(1 for r in _RESULTS.values() if r["outcome"] == k)
              for k in ("passed", "failed", "skipped")}
    lines = [f"# Conformance report: {target}", "",
             f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} "
             "skipped (not applicable)", "", "| clause | test | result | note |", "|---|---|---|---|"]
    suite = ET.Element("testsuite", name=f"conformance-{target}", tests=str(len(_RESULTS)),
                       failures=str(counts["failed"]), skipped=str(counts["skipped"]))
    for nodeid, r in sorted(_RESULTS.items()):
        module, _, name = nodeid.partition("::")
        clause = docs.get(nodeid) or name.replace("test_", "").replace("_", " ")
        note = r["detail"].replace("|", "/")
        lines.append(f"| {clause} | `{name}` | {r['outcome']} | {note} |")
        case = ET.SubElement(suite, "testcase", classname=module, name=name,
                             time=f"{r['seconds']:.3f}")
        if r["outcome"] == "failed":
            ET.SubElement(case, "failure", message=r["detail"])
        elif r["outcome"] == "skipped":
            ET.SubElement(case, "skipped", message=r["detail"])
    (out / f"conformance-{target}.md").write_text("\n".join(lines) + "\n")
    ET.ElementTree(suite).write(out / f"conformance-{target}.xml", encoding="utf-8",
                                xml_declaration=True)
