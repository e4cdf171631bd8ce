"""Attacks on a live router: its peak memory and /health latency while they run (issue 12).

    python bench/attack.py                         # this checkout's router
    python bench/attack.py --root /tmp/before      # another checkout (e.g. `git archive` of an
                                                   # older commit), for before/after figures

The router (``python -m refimpl`` run from ``--root``, fake children, the tiny models) is started
fresh for each attack:

- ``headers``: 8 connections each send a 64 MB header that never ends (1 MiB writes; a
  connection the router closes stops there);
- ``bodies``: 4 connections each POST a 90 MB body at once (one JSON string, as an image
  payload would be);
- ``objects``: one POST of a 30 MB body of ``{},{},...`` (a document of many small values);
- ``flood``: a child (fake fault ``flood-output``) writes log lines as fast as its pipes take
  them, for 5 s;
- ``reload``: five ``GET /models?reload=1`` in a row, with a GGUF whose header holds a
  1M-entry array in the models folder;
- ``rest``: nothing, for 3 s: the baseline the others' /health latency is divided by.

Meanwhile a client asks ``GET /health`` in a loop. Per attack: the router's resident memory
before, its peak (VmHWM) during the attack, what the attackers got (status, or ``cut`` when the
router closed the connection), and /health latency p50 / p99 / max. The peak is reset before each
attack (``/proc/PID/clear_refs``), so it is that attack's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures.hostile import hostile_gguf  # noqa: E402
from fixtures.procs import popen, wait_healthy  # noqa: E402
from fixtures.tiny_models import build_models_dir, default_cache_dir  # noqa: E402
from refimpl.router.processes import free_port  # noqa: E402

MIB = 1024 * 1024


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class HealthProbe:
    """GET /health in a loop on its own thread, each on a fresh connection; latencies in s."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = httpx.get(self.url + "/health", timeout=60).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.latencies.append(time.perf_counter() - t0)
            self.failures += not ok
            time.sleep(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(70)


def send_all(port: int, head: bytes, pieces: int, piece: bytes, tail: bytes = b"") -> str:
    """Send ``head``, ``pieces`` x ``piece`` and ``tail``; the answer's status, or ``cut``."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        cut = ""
        try:
            s.sendall(head)
            for _ in range(pieces):
                s.sendall(piece)
            s.sendall(tail)
        except (BrokenPipeError, ConnectionResetError):
            cut = " (cut while sending)"  # the router answered early and closed
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
        except socket.timeout:
            return "timeout"
    status = answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "no answer"
    return status + cut


def headers_attack(port: int) -> list[str]:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: "
    return run_parallel(8, lambda: send_all(port, head, 64, b"a" * MIB))


def bodies_attack(port: int) -> list[str]:
    size = 90 * 1000 * 1000
    prefix = b'{"model": "no-such-model", "image": "'
    suffix = b'"}'
    total = len(prefix) + size + len(suffix)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(total).encode() + b"\r\n\r\n" + prefix)
    return run_parallel(4, lambda: send_all(port, head, size // MIB, b"A" * MIB,
                                            b"A" * (size % MIB) + suffix))


def objects_attack(port: int) -> list[str]:
    body = b'{"a": [' + b"{}," * (10 * 1000 * 1000) + b'{}], "model": "no-such-model"}'
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    return [send_all(port, head + body, 0, b"")]


def run_parallel(n: int, attack: Callable[[], str]) -> list[str]:
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(attack())) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return sorted(results)


def rest(port: int) -> list[str]:
    time.sleep(3)
    return []


def flood_attack(port: int) -> list[str]:
    got = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                     json={"model": "flood-output", "messages": []}).status_code
    time.sleep(5)  # the child floods all along
    return [str(got)]


def reload_attack(port: int) -> list[str]:
    return [str(httpx.get(f"http://127.0.0.1:{port}/models?reload=1", timeout=120).status_code)
            for _ in range(5)]


ATTACKS = {"rest": rest, "headers": headers_attack, "bodies": bodies_attack,
           "objects": objects_attack, "flood": flood_attack, "reload": reload_attack}


def models_for(name: str, models: Path, scratch: Path) -> Path:
    """The models folder an attack runs with: tiny-xs, and the flood's or the reload's file."""
    folder = scratch / name
    folder.mkdir()
    (folder / "tiny-xs.gguf").symlink_to(models / "tiny-xs.gguf")
    if name == "flood":
        (folder / "flood-output.gguf").symlink_to(models / "tiny-xs.gguf")
    elif name == "reload":
        hostile_gguf(folder / "hostile.gguf")
    return folder


def measure(root: Path, name: str, models: Path) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ)
    env.pop("LLAMA_API_KEY", None)
    cmd = [sys.executable, "-m", "refimpl", "--port", str(port), "--models-dir", str(models),
           "--offline", "--child-cmd", "{python} -m fixtures.fake_child --faults-from-name"]
    proc = popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                 stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        why = wait_healthy(url, proc)
        if why is not None:
            raise RuntimeError(f"the router {why}")
        httpx.post(url + "/v1/chat/completions", timeout=60,
                   json={"model": "tiny-xs", "messages": []})  # a child up, as in use
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
        rss = status_field(proc.pid, "VmRSS")
        t0 = time.monotonic()
        with HealthProbe(url) as probe:
            got = ATTACKS[name](port)
        seconds = time.monotonic() - t0
        peak = status_field(proc.pid, "VmHWM")
        alive = proc.poll() is None
        return {"attack": name, "rss_mib": round(rss / MIB), "peak_mib": round(peak / MIB),
                "seconds": round(seconds, 1), "attackers_got": got, "alive_after": alive,
                "health_n": len(probe.latencies), "health_failures": probe.failures,
                "health_p50_ms": round(pct(probe.latencies, 0.5) * 1000, 1),
                "health_p99_ms": round(pct(probe.latencies, 0.99) * 1000, 1),
                "health_max_ms": round(max(probe.latencies) * 1000, 1)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose router to run")
    p.add_argument("--attack", choices=sorted(ATTACKS), action="append",
                   help="one attack (repeatable); default: all")
    args = p.parse_args()
    models = build_models_dir(default_cache_dir()).root
    print(f"router from {args.root}", flush=True)
    names = args.attack or list(ATTACKS)
    if "rest" not in names:
        names = ["rest", *names]  # the baseline is measured in every run
    with tempfile.TemporaryDirectory(prefix="attack-models-") as scratch:
        base: dict[str, Any] | None = None
        for name in names:
            row = measure(args.root.resolve(), name, models_for(name, models, Path(scratch)))
            if name == "rest":
                base = row
            elif base is not None:  # the same router at rest, in this run
                for q in ("p50", "p99"):
                    row[f"health_{q}_x_rest"] = round(
                        row[f"health_{q}_ms"] / max(base[f"health_{q}_ms"], 0.1), 1)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
