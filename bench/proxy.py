"""Proxy overhead and cold-load latency of a router, measured on loopback with tiny models.

    python bench/proxy.py                                   # the reference router
    python bench/proxy.py --router-bin build/bin/llama-server   # ... and llama-server's, side by side
    python bench/proxy.py --write                           # record in docs/BENCHMARKS.md

Overhead: a small request (``POST /tokenize``) sent straight to a loaded child and through the
router, interleaved one for one in the same run; the figure is the per-pair difference (router
minus direct), p50 and p99. Cold load: ``/models/unload``, then a one-token chat request for the
unloaded model, timed until its response.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from conformance.process import RouterProcess  # noqa: E402
from fixtures.procs import children_of, cmdline  # noqa: E402
from fixtures.tiny_models import build_models_dir, default_cache_dir  # noqa: E402
from refimpl.router.processes import free_port  # noqa: E402

MARK = "<!-- proxy -->"
MODEL = "tiny-xs"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def child_of(router_pid: int, model_file: str) -> tuple[int, dict[str, str]]:
    """The port of the child that serves ``model_file``, and the headers that reach it straight:
    its own key, which the router gave it in its environment (this user may read it)."""
    for pid in children_of(router_pid):
        args = cmdline(pid)
        if model_file in " ".join(args) and "--port" in args:
            try:
                key = psutil.Process(pid).environ().get("LLAMA_API_KEY")
            except psutil.Error:
                key = None
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return int(args[args.index("--port") + 1]), headers
    raise RuntimeError(f"no child of {router_pid} serves {model_file}")


RETRIED = {"count": 0}


def _post(c: httpx.Client, url: str, **kwargs: object) -> httpx.Response:
    """A POST, sent again once if a kept-alive connection was closed under it (llama-server's
    keep-alive race: docs/BENCHMARKS.md, "Load"); each resend is counted and reported."""
    try:
        return c.post(url, **kwargs)  # type: ignore[arg-type]
    except (httpx.RemoteProtocolError, httpx.ReadError):
        RETRIED["count"] += 1
        return c.post(url, **kwargs)  # type: ignore[arg-type]


def measure(name: str, cmd: list[str], models_file: str, pairs: int, colds: int) -> dict[str, float]:
    print(f"{name}: starting {' '.join(cmd[:3])} ...", flush=True)
    with tempfile.NamedTemporaryFile(prefix=f"proxy-{name.split()[0]}-", suffix=".log",
                                     delete=False) as log:
        log_path = Path(log.name)
    router = RouterProcess(cmd, log_path, sse=False)  # healthy once constructed
    url = router.url
    try:
        with httpx.Client(timeout=60) as c:
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1}
            assert _post(c, url + "/v1/chat/completions", json=chat).status_code == 200
            port, straight = child_of(router.proc.pid, models_file)
            direct = f"http://127.0.0.1:{port}"
            body = {"content": "hello world, a small request"}
            routed = {**body, "model": MODEL}
            for _ in range(20):  # warm both paths
                _post(c, direct + "/tokenize", json=body, headers=straight)
                _post(c, url + "/tokenize", json=routed)
            overhead, direct_t, routed_t = [], [], []
            for i in range(pairs):
                if i and i % 200 == 0:
                    print(f"  {i}/{pairs} pairs", flush=True)
                t0 = time.perf_counter()
                assert _post(c, direct + "/tokenize", json=body, headers=straight).status_code == 200
                t1 = time.perf_counter()
                assert _post(c, url + "/tokenize", json=routed).status_code == 200
                t2 = time.perf_counter()
                direct_t.append(t1 - t0)
                routed_t.append(t2 - t1)
                overhead.append((t2 - t1) - (t1 - t0))
            cold = []
            for _ in range(colds):
                _post(c, url + "/models/unload", json={"model": MODEL})
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    data = c.get(url + "/models").json()["data"]
                    if next(m for m in data if m["id"] == MODEL)["status"]["value"] == "unloaded":
                        break
                    time.sleep(0.02)
                t0 = time.perf_counter()
                assert _post(c, url + "/v1/chat/completions", json=chat).status_code == 200
                cold.append(time.perf_counter() - t0)
    finally:
        router.stop()
        log_path.unlink()
    return {"overhead_p50": pct(overhead, 0.5) * 1e3, "overhead_p99": pct(overhead, 0.99) * 1e3,
            "direct_p50": pct(direct_t, 0.5) * 1e3, "routed_p50": pct(routed_t, 0.5) * 1e3,
            "cold_p50": statistics.median(cold) * 1e3, "cold_max": max(cold) * 1e3}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--router-bin", help="also measure this llama-server binary in router mode")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--colds", type=int, default=10)
    p.add_argument("--write", action="store_true")
    a = p.parse_args()
    models = build_models_dir(default_cache_dir())
    common = ["--models-dir", str(models.root), "--host", "127.0.0.1"]
    runs = {"refimpl": measure("refimpl", [sys.executable, "-m", "refimpl", *common, "--port",
                                           str(free_port())], str(models[MODEL].path),
                               a.pairs, a.colds)}
    if a.router_bin:
        runs["llama-server"] = measure("llama-server", [a.router_bin, *common, "--port",
                                                        str(free_port())],
                                       str(models[MODEL].path), a.pairs, a.colds)
    rows = [f"| {name} | {r['overhead_p50']:.2f} | {r['overhead_p99']:.2f} | "
            f"{r['direct_p50']:.2f} | {r['routed_p50']:.2f} | {r['cold_p50']:.0f} | "
            f"{r['cold_max']:.0f} |" for name, r in runs.items()]
    table = "\n".join([
        "| router | overhead p50 ms | overhead p99 ms | direct p50 ms | routed p50 ms | "
        "cold load p50 ms | cold load max ms |", "|---|---|---|---|---|---|---|", *rows])
    if "llama-server" in runs:
        ratio = runs["refimpl"]["overhead_p50"] / max(runs["llama-server"]["overhead_p50"], 1e-9)
        table += f"\n\nOverhead ratio refimpl / llama-server (p50): {ratio:.2f}"
    else:
        table += ("\n\nNo llama-server binary was given, so there is no ratio in this run; the "
                  "C++ router's overhead measured earlier on these machines is about 0.9 ms (p50).")
    if RETRIED["count"]:
        table += (f"\n\nRequests sent again once, a kept-alive connection closed under them: "
                  f"{RETRIED['count']} (their pair's time includes the failed try)")
    print(table)
    if a.write:
        cmd = "python bench/proxy.py --write" + (" --router-bin PATH" if a.router_bin else "")
        section = (f"## Proxy overhead and cold load\n\nCommand: `{cmd}` ({a.pairs} "
                   f"interleaved pairs of POST /tokenize on {MODEL}, {a.colds} cold loads; "
                   f"{platform.python_implementation()} {platform.python_version()})\n\n"
                   f"{table}")
        print(f"written to {write_section(MARK, section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
