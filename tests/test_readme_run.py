"""The README's run command: the router starts on generated tiny models with no other set-up,
prints its URL and a curl for the simplest of them, and that curl gets a completion with no
warning from llama.cpp. Then SIGTERM or SIGINT (Ctrl-C) leaves no child, and Ctrl-C, the README's
way to stop it, is a clean stop: exit status 0 and no traceback."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.procs import children_of, popen, wait_gone
from refimpl.router.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.live


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_command_prints_a_curl_that_works(tmp_path: Path, stop: signal.Signals) -> None:
    pytest.importorskip("llama_cpp")
    port = free_port()
    log = tmp_path / "router.log"
    with log.open("wb") as out:
        router = popen([sys.executable, "-m", "refimpl", "--port", str(port)],
                       cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        curl = None
        while time.monotonic() < deadline and curl is None:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("try: "):
                    curl = line[len("try: "):]
            time.sleep(0.1)
        assert curl is not None, log.read_text()
        assert f"http://127.0.0.1:{port}" in log.read_text()
        # A plain one-file model: tiny-vision is as small, but loads a projector too.
        assert json.loads(shlex.split(curl)[-1])["model"] == "tiny-xs", curl
        answer = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60)
        body = json.loads(answer.stdout)
        assert body["choices"][0]["message"]["role"] == "assistant", body
        children = children_of(router.pid)
        assert children, "the curl should have started a child"
        # The child's load is logged by now (it answered): the tiny models' training context
        # covers the context the child runs with.
        assert "n_ctx_train" not in log.read_text(), log.read_text()
    finally:
        router.send_signal(stop)
        try:
            router.wait(timeout=30)
        except subprocess.TimeoutExpired:
            router.kill()
    left = wait_gone(children, timeout=15)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"children left after {stop.name}: {left}"
    output = log.read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    if stop is signal.SIGINT:
        assert router.returncode == 0, output
    else:  # uvicorn stops gracefully, then raises SIGTERM again: death by SIGTERM is a clean stop
        assert router.returncode in (0, -stop), output
