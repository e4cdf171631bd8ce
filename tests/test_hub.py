"""The local hub (fixtures/hub.py): huggingface_hub and llama-server download from it as from HF.

Loopback only. The answers are checked without sockets first (answer(), byte_range()), then through
huggingface_hub in this process (endpoint=hub.url) and in a child process (hub.env()), then with
the real llama-server where a binary is found (LLAMA_SERVER_BIN_PATH, or the harness's own build).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fixtures.hub import (
    MODEL_SHARDED,
    MODEL_VISION,
    MODEL_XS,
    REPO_CORRUPT,
    REPO_S,
    REPO_SHARDED,
    REPO_VISION,
    REPO_XS,
    Fault,
    LocalHub,
    Repo,
    answer,
    byte_range,
)
from fixtures.procs import popen
from fixtures.tiny_models import ModelsDir

pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

ROOT = Path(__file__).resolve().parent.parent
XS_FILE = "tiny-xs-F16.gguf"
SLOW_REPO = "test/slow-GGUF"
SLOW_FILE = "slow-F16.gguf"
SLOW_DATA = bytes(range(256)) * 512  # 128 KiB


@pytest.fixture
def hub(tiny_models: ModelsDir) -> Iterator[LocalHub]:
    with LocalHub(cache=tiny_models.root) as running:
        running.add_repo(SLOW_REPO, {SLOW_FILE: SLOW_DATA})
        yield running


def _snapshot(cache: Path, repo_id: str, sha: str) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / sha


def _download(hub: LocalHub, repo_id: str, filename: str, cache: Path) -> Path:
    return Path(hf_hub_download(repo_id, filename, cache_dir=cache, endpoint=hub.url, token=False))


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


# --- the answers, without sockets --------------------------------------------------------------

def test_byte_range_reads_single_ranges_and_ignores_the_rest() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=10-", 100) == (10, 100)
    assert byte_range("bytes=10-19", 100) == (10, 20)
    assert byte_range("bytes=90-1000", 100) == (90, 100)
    assert byte_range("bytes=-5", 100) == (95, 100)
    assert byte_range("bytes=0-1,5-6", 100) is None
    assert byte_range("items=0-1", 100) is None
    assert byte_range("bytes=x-1", 100) is None
    for unsatisfiable in ("bytes=100-", "bytes=200-300", "bytes=-0"):
        with pytest.raises(ValueError):
            byte_range(unsatisfiable, 100)


def test_tree_lists_folders_and_their_files() -> None:
    repo = Repo.of("o/r", {"a-F16.gguf": b"a", "sub/b.gguf": b"bb", "sub/deep/c.json": b"{}"})
    repos = {"o/r": repo}

    def listing(target: str) -> list[tuple[str, str]]:
        reply = answer("GET", target, None, repos)
        assert reply.status == 200 and isinstance(reply.body, bytes)
        return [(e["type"], e["path"]) for e in json.loads(reply.body)]

    assert listing("/api/models/o/r/tree/main") == [("file", "a-F16.gguf"), ("directory", "sub")]
    assert listing("/api/models/o/r/tree/main?recursive=true") == [
        ("file", "a-F16.gguf"), ("directory", "sub"), ("file", "sub/b.gguf"),
        ("directory", "sub/deep"), ("file", "sub/deep/c.json")]
    assert listing(f"/api/models/o/r/tree/{repo.sha}/sub") == [
        ("file", "sub/b.gguf"), ("directory", "sub/deep")]
    missing = answer("GET", "/api/models/o/r/tree/main/nope", None, repos)
    assert missing.status == 404 and ("X-Error-Code", "EntryNotFound") in missing.headers


def test_commit_follows_content_and_small_files_are_not_lfs() -> None:
    one = Repo.of("o/r", {"m.gguf": b"x", "config.json": b"{}"})
    assert one.sha == Repo.of("o/r", {"config.json": b"{}", "m.gguf": b"x"}).sha
    assert one.sha != Repo.of("o/r", {"m.gguf": b"y", "config.json": b"{}"}).sha
    assert len(one.sha) == 40 and int(one.sha, 16) >= 0
    model, config = one.file("m.gguf"), one.file("config.json")
    assert model is not None and model.lfs and model.etag == f'"{model.sha256}"'
    assert config is not None and not config.lfs and config.etag == f'"{config.blob_id}"'


def test_unknown_things_get_404_with_the_hub_error_codes() -> None:
    repos = {"o/r": Repo.of("o/r", {"m.gguf": b"x"})}

    def code(method: str, target: str) -> tuple[int, str | None]:
        reply = answer(method, target, None, repos)
        return reply.status, dict(reply.headers).get("X-Error-Code")

    assert code("GET", "/api/models/o/nope") == (404, "RepoNotFound")
    assert code("HEAD", "/o/nope/resolve/main/m.gguf") == (404, "RepoNotFound")
    assert code("HEAD", "/o/r/resolve/main/nope.gguf") == (404, "EntryNotFound")
    assert code("HEAD", "/o/r/resolve/v2/m.gguf") == (404, "RevisionNotFound")
    assert code("GET", "/api/models/o/r/revision/v2") == (404, "RevisionNotFound")
    assert code("GET", "/somewhere/else") == (404, None)
    assert code("POST", "/api/models/o/r") == (404, None)


# --- over HTTP --------------------------------------------------------------------------------

def test_resolve_headers_are_what_huggingface_hub_and_llama_cpp_read(hub: LocalHub) -> None:
    repo = hub.repo(REPO_XS)
    f = repo.file(XS_FILE)
    assert f is not None
    r = httpx.head(f"{hub.url}/{REPO_XS}/resolve/main/{XS_FILE}")
    assert r.status_code == 200
    assert r.headers["X-Repo-Commit"] == repo.sha
    assert r.headers["ETag"] == r.headers["X-Linked-Etag"] == f'"{f.sha256}"'
    assert r.headers["Content-Length"] == r.headers["X-Linked-Size"] == str(f.size)
    assert r.headers["Accept-Ranges"] == "bytes"
    assert not any(name.lower().startswith("x-xet") for name in r.headers)


def test_range_requests_get_206_and_the_right_bytes(hub: LocalHub) -> None:
    url = f"{hub.url}/{SLOW_REPO}/resolve/main/{SLOW_FILE}"
    size = len(SLOW_DATA)
    with httpx.Client() as client:
        tail = client.get(url, headers={"Range": "bytes=1000-"})
        assert tail.status_code == 206
        assert tail.headers["Content-Range"] == f"bytes 1000-{size - 1}/{size}"
        assert tail.content == SLOW_DATA[1000:]
        middle = client.get(url, headers={"Range": "bytes=300-599"})
        assert middle.status_code == 206 and middle.content == SLOW_DATA[300:600]
        assert client.get(url, headers={"Range": f"bytes={size}-"}).status_code == 416
        assert client.get(url).content == SLOW_DATA


def test_llama_cpp_api_calls(hub: LocalHub) -> None:
    repo = hub.repo(REPO_SHARDED)
    refs = httpx.get(f"{hub.url}/api/models/{REPO_SHARDED}/refs").json()
    assert refs["branches"] == [
        {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.sha}]
    tree = httpx.get(f"{hub.url}/api/models/{REPO_SHARDED}/tree/{repo.sha}?recursive=true").json()
    assert [e["path"] for e in tree] == ["tiny-sharded-F16-00001-of-00002.gguf",
                                         "tiny-sharded-F16-00002-of-00002.gguf"]
    for entry in tree:
        f = repo.file(entry["path"])
        assert f is not None
        assert entry["type"] == "file" and entry["size"] == f.size
        assert entry["lfs"]["oid"] == f.sha256 and len(entry["lfs"]["oid"]) == 64
        assert len(entry["oid"]) == 40 and int(entry["oid"], 16) >= 0


def test_hf_hub_download_gives_the_bytes_in_the_standard_cache_layout(hub: LocalHub,
                                                                    tmp_path: Path) -> None:
    repo = hub.repo(REPO_XS)
    f = repo.file(XS_FILE)
    assert f is not None
    path = _download(hub, REPO_XS, XS_FILE, tmp_path)
    assert path == _snapshot(tmp_path, REPO_XS, repo.sha) / XS_FILE
    assert path.read_bytes() == f.data
    storage = tmp_path / "models--tiny--tiny-xs-GGUF"
    assert (storage / "refs" / "main").read_text() == repo.sha
    assert path.resolve() == (storage / "blobs" / f.sha256).resolve()
    assert [(r.method, r.status) for r in hub.requests][-2:] == [("HEAD", 200), ("GET", 200)]


def test_a_plain_git_file_is_cached_under_its_blob_id(hub: LocalHub, tmp_path: Path) -> None:
    repo = hub.add_repo("test/with-config", {"config.json": b'{"a": 1}', "m-F16.gguf": b"gguf"})
    path = _download(hub, "test/with-config", "config.json", tmp_path)
    config = repo.file("config.json")
    assert config is not None and path.read_bytes() == b'{"a": 1}'
    assert path.resolve().name == config.blob_id


def test_snapshot_download_takes_only_the_allowed_files(hub: LocalHub, tmp_path: Path) -> None:
    folder = Path(snapshot_download(REPO_S, allow_patterns="*Q8_0.gguf", cache_dir=tmp_path,
                                    endpoint=hub.url, token=False))
    assert folder == _snapshot(tmp_path, REPO_S, hub.repo(REPO_S).sha)
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-s-Q8_0.gguf"]
    f = hub.repo(REPO_S).file("tiny-s-Q8_0.gguf")
    assert f is not None and (folder / "tiny-s-Q8_0.gguf").read_bytes() == f.data


def test_model_info_and_list_repo_files(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    repo = hub.repo(REPO_VISION)
    info = api.model_info(REPO_VISION, files_metadata=True)
    assert info.id == REPO_VISION and info.sha == repo.sha
    assert info.siblings is not None
    by_name = {s.rfilename: s for s in info.siblings}
    assert sorted(by_name) == ["mmproj-tiny-vision-F16.gguf", "tiny-vision-F16.gguf"]
    for f in repo.files:
        lfs = by_name[f.path].lfs
        assert by_name[f.path].size == f.size and lfs is not None and lfs.sha256 == f.sha256
    assert api.model_info(REPO_VISION, revision=repo.sha).sha == repo.sha
    assert sorted(api.list_repo_files(REPO_VISION)) == sorted(by_name)
    assert api.list_repo_files(REPO_CORRUPT) == ["corrupt-F16.gguf"]


def test_unknown_repo_file_and_revision_raise_the_hub_errors(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tiny/nope-GGUF")
    with pytest.raises(RepositoryNotFoundError):
        _download(hub, "tiny/nope-GGUF", XS_FILE, tmp_path)
    with pytest.raises(EntryNotFoundError):
        _download(hub, REPO_XS, "nope.gguf", tmp_path)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO_XS, revision="v9")


def test_throttle_makes_a_download_take_at_least_size_over_rate(hub: LocalHub,
                                                                tmp_path: Path) -> None:
    rate = 64 * 1024
    hub.set_throttle(rate, repo=SLOW_REPO)
    started = time.monotonic()
    _download(hub, SLOW_REPO, SLOW_FILE, tmp_path)
    assert time.monotonic() - started >= len(SLOW_DATA) / rate


def test_throttle_shows_progress_and_can_be_lifted_mid_download(hub: LocalHub) -> None:
    hub.set_throttle(16 * 1024)  # the whole file would take 8 s
    url = f"{hub.url}/{SLOW_REPO}/resolve/main/{SLOW_FILE}"
    received: list[bytes] = []
    download = threading.Thread(target=lambda: received.append(httpx.get(url, timeout=30).content))
    download.start()
    try:
        samples: list[int] = []
        deadline = time.monotonic() + 10
        while len(set(samples)) < 3 and time.monotonic() < deadline:
            samples.append(hub.bytes_sent)
            time.sleep(0.1)
        progress = sorted(set(samples) - {0})
        assert len(progress) >= 2 and progress[-1] < len(SLOW_DATA)
    finally:
        hub.set_throttle(None)
        download.join(timeout=30)
    assert not download.is_alive() and received == [SLOW_DATA]


def test_break_half_cuts_the_body_at_the_middle_of_the_file(hub: LocalHub) -> None:
    hub.set_fault(Fault.BREAK_HALF, repo=SLOW_REPO)
    url = f"{hub.url}/{SLOW_REPO}/resolve/main/{SLOW_FILE}"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url)
    last = hub.requests[-1]
    assert (last.status, last.bytes_sent) == (200, len(SLOW_DATA) // 2)
    # Other repos are untouched, and dropping the override heals this one.
    assert httpx.get(f"{hub.url}/{REPO_XS}/resolve/main/{XS_FILE}").status_code == 200
    hub.set_fault(None, repo=SLOW_REPO)
    assert httpx.get(url).content == SLOW_DATA


@pytest.mark.slow  # huggingface_hub retries 5 times, a second apart
def test_break_half_fails_hf_hub_download_and_leaves_no_file(hub: LocalHub, tmp_path: Path) -> None:
    hub.set_fault("break-half")
    # The transport's error (httpx's, or httpx2's in huggingface_hub 2) or huggingface_hub's own.
    with pytest.raises(Exception, match="peer closed connection|Consistency check failed"):
        _download(hub, SLOW_REPO, SLOW_FILE, tmp_path)
    snapshots = tmp_path / "models--test--slow-GGUF" / "snapshots"
    assert not any(p.is_file() for p in snapshots.rglob("*")) if snapshots.exists() else True
    gets = [r for r in hub.requests if r.method == "GET"]
    assert gets[0].bytes_sent == len(SLOW_DATA) // 2 and len(gets) > 1  # it did retry


def test_concurrent_clients_and_a_client_that_hangs_up(hub: LocalHub,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    hub.set_throttle(32 * 1024, repo=SLOW_REPO)
    port = int(hub.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as quitter:
        quitter.sendall(f"GET /{SLOW_REPO}/resolve/main/{SLOW_FILE} HTTP/1.1\r\n"
                        "Host: x\r\n\r\n".encode())
        assert quitter.recv(4096).startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 10
    while not hub.requests and time.monotonic() < deadline:  # logged once its handler gave up
        time.sleep(0.05)
    assert [(r.status, r.bytes_sent < len(SLOW_DATA)) for r in hub.requests] == [(200, True)]
    url = f"{hub.url}/{REPO_XS}/resolve/main/{XS_FILE}"
    f = hub.repo(REPO_XS).file(XS_FILE)
    assert f is not None
    results: list[bytes] = []

    def fetch(start: int) -> None:
        results.append(httpx.get(url, headers={"Range": f"bytes={start}-{start + 999}"}).content)

    threads = [threading.Thread(target=fetch, args=(i * 1000,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == sorted(f.data[i * 1000:(i + 1) * 1000] for i in range(8))
    hub.stop()  # joins every connection thread, the hung-up one included
    assert "Traceback" not in capfd.readouterr().err


def test_stop_cuts_off_a_download_in_progress(hub: LocalHub) -> None:
    hub.set_throttle(8 * 1024)
    errors: list[Exception] = []

    def download() -> None:
        try:
            httpx.get(f"{hub.url}/{SLOW_REPO}/resolve/main/{SLOW_FILE}", timeout=30)
        except httpx.HTTPError as e:
            errors.append(e)

    client = threading.Thread(target=download)
    client.start()
    deadline = time.monotonic() + 10
    while hub.bytes_sent == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    hub.stop()
    client.join(timeout=30)
    assert not client.is_alive() and len(errors) == 1


# --- other processes --------------------------------------------------------------------------

def test_env_points_a_child_process_at_the_hub(hub: LocalHub, tmp_path: Path) -> None:
    script = ("import sys; from huggingface_hub import hf_hub_download; "
              "print(hf_hub_download(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3]))")
    done = subprocess.run([sys.executable, "-c", script, REPO_XS, XS_FILE, str(tmp_path)],
                          env=os.environ | hub.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    sha = hub.repo(REPO_XS).sha
    assert Path(done.stdout.strip()) == _snapshot(tmp_path, REPO_XS, sha) / XS_FILE
    assert any(r.path.endswith(f"/resolve/main/{XS_FILE}") for r in hub.requests)


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line from the hub process"
    return proc.stdout.readline().strip()


def test_command_line_help() -> None:
    done = subprocess.run([sys.executable, "-m", "fixtures.hub", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--throttle" in done.stdout and "break-half" in done.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_line_serves_until_signalled(signum: int, tiny_models: ModelsDir) -> None:
    proc = popen(
        [sys.executable, "-m", "fixtures.hub", "--cache", str(tiny_models.root)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _first_line(proc, timeout=60)
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/api/models/{REPO_XS}/refs").status_code == 200
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _llama_server_bin() -> Path | None:
    configured = os.environ.get("LLAMA_SERVER_BIN_PATH")
    # Where scripts/build-llama-server leaves it.
    default = (Path.home() / ".cache" / "llama-router-harness" / "llama-server" / "src"
               / "llama.cpp" / "build" / "bin" / "llama-server")
    path = Path(configured) if configured else default
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _run_llama_server(hub: LocalHub, model: str, cache: Path, log: Path) -> int | None:
    """Start `llama-server -hf model`; the exit code if it exits, None once /health says 200."""
    binary = _llama_server_bin()
    if binary is None:
        pytest.skip("no llama-server binary: set LLAMA_SERVER_BIN_PATH, or build it with "
                    "scripts/build-llama-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | hub.env() | {"LLAMA_CACHE": str(cache)}
    with log.open("wb") as out:
        proc = popen(
            [str(binary), "-hf", model, "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return proc.returncode
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"llama-server not healthy after 120 s:\n{_tail(log)}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.live
@pytest.mark.parametrize("model", [MODEL_XS, MODEL_SHARDED, MODEL_VISION])
def test_llama_server_downloads_from_the_hub_and_serves(hub: LocalHub, model: str,
                                                        tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "llama-server.log"
    exit_code = _run_llama_server(hub, model, cache, log)
    assert exit_code is None, _tail(log)
    repo = hub.repo(model.split(":")[0])
    storage = cache / f"models--{repo.repo_id.replace('/', '--')}"
    assert (storage / "refs" / "main").read_text() == repo.sha
    for f in repo.files:  # every file of the model: both shards; the model and its mmproj
        snapshot_file = _snapshot(cache, repo.repo_id, repo.sha) / f.path
        assert snapshot_file.resolve() == (storage / "blobs" / f.sha256).resolve()
        assert snapshot_file.read_bytes() == f.data


@pytest.mark.live
def test_llama_server_downloads_the_corrupt_model_then_fails_to_load_it(hub: LocalHub,
                                                                        tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "llama-server.log"
    exit_code = _run_llama_server(hub, f"{REPO_CORRUPT}:F16", cache, log)
    assert exit_code not in (None, 0)
    repo = hub.repo(REPO_CORRUPT)
    assert (_snapshot(cache, REPO_CORRUPT, repo.sha) / "corrupt-F16.gguf").is_file()
