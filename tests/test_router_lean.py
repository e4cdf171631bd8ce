"""The router process carries no library it never runs (issue: router peak memory): numpy (the
``gguf`` package imports it; the router reads gguf's type table alone), rich and pygments,
trio, watchfiles (uvicorn's reload), websockets; httpx, httpcore and h11 (the proxy has its own
client on httptools: refimpl/router/upstream.py; h11 is uvicorn's fallback without httptools),
psutil (free memory is read from /proc/meminfo on Linux) and uvloop (the router runs on asyncio's
own loop: 1.3 MiB less, refimpl/router/main.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from refimpl.router.processes import free_port

pytestmark = pytest.mark.live
NEVER = ("numpy", "gguf", "rich", "pygments", "trio", "watchfiles", "websockets", "httpx",
         "httpcore", "h11", "psutil", "uvloop")


def test_gguf_completeness_is_read_without_numpy(tiny_models: Any) -> None:
    code = ("import sys; from pathlib import Path; from refimpl.router.memory import gguf_complete;"
            f"assert gguf_complete(Path({str(tiny_models['tiny-xs'].path)!r}));"
            "print(sorted(m for m in ('numpy', 'gguf') if sys.modules.get(m) is not None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


PROBE = """
import json, os, sys, threading, time, urllib.request

def probe():
    url = "http://127.0.0.1:%(port)d"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    body = json.dumps({"model": "tiny-xs", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    answer = urllib.request.urlopen(urllib.request.Request(
        url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}),
        timeout=60)
    print(answer.status, sorted(m for m in %(never)r if sys.modules.get(m) is not None), flush=True)
    os._exit(0)

threading.Thread(target=probe, daemon=True).start()
sys.argv = ["refimpl", "--port", "%(port)d", "--models-dir", %(models)r]
from refimpl.__main__ import run
run()
"""


def test_the_router_process_loads_none_of_them(tiny_models: Any) -> None:
    """The router as ``python -m refimpl`` runs it, asked for a chat (a child loaded, its answer
    relayed), then asked from within which modules it holds."""
    pytest.importorskip("llama_cpp")
    code = PROBE % {"port": free_port(), "never": NEVER, "models": str(tiny_models.root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "200 []", out.stdout + out.stderr[-3000:]


def test_free_memory_without_psutil_is_psutils_figure() -> None:
    """``host_available`` reads MemAvailable itself: the figure psutil gives on Linux, to within
    what the machine's use changes between the two reads."""
    psutil = pytest.importorskip("psutil")
    from refimpl.router.memory import host_available

    ours, theirs = host_available(), psutil.virtual_memory().available
    assert ours is not None and abs(ours - theirs) < 64 * 1024**2, (ours, theirs)
