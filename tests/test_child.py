"""The child (``python -m refimpl.child``) as a router sees it: its line protocol and its HTTP API.

Every test marked ``live`` starts the real child on a tiny GGUF model and a free loopback port,
reads its stdout with the protocol's own ``LineReader``/``parse_line``, and talks to it with httpx.
Each process is killed by pid in a ``finally``; every wait has a timeout. The in-process tests at
the top check the partial top-n selection behind ``n_probs`` against a full sort, and the loader's
progress reports and abort switch.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures.procs import popen
from fixtures.tiny_models import ModelsDir
from refimpl.child.probabilities import LogitRow, TokenProbability, top_n_probabilities
from refimpl.core.protocol import (
    EXIT_COMMAND,
    LineReader,
    LoadingState,
    LogLine,
    Parsed,
    ReadyState,
    Rejection,
    SleepingState,
    parse_line,
)

REPO = Path(__file__).resolve().parents[1]
ROUTER_ENV = "LLAMA_SERVER_ROUTER_PORT"
START_TIMEOUT = 30.0   # loading .. ready, tiny model, cold imports included
EXIT_TIMEOUT = 5.0     # the router's budget between the exit command and a force-kill
HTTP_TIMEOUT = 20.0


# -- n_probs: partial selection against a full sort ------------------------------------------------


def _by_full_sort(logits: np.ndarray, n: int) -> list[TokenProbability]:
    """The obvious reference: softmax, then sort the whole vocabulary (logit desc, id asc)."""
    row = [float(x) for x in logits]
    top = max(row)
    log_z = math.log(sum(math.exp(x - top) for x in row))
    order = sorted(range(len(row)), key=lambda i: (-row[i], i))
    return [TokenProbability(i, row[i] - top - log_z) for i in order[:max(n, 0)]]


def _assert_same(got: list[TokenProbability], want: list[TokenProbability]) -> None:
    assert [p.id for p in got] == [p.id for p in want]
    for g, w in zip(got, want):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-9)


def test_top_n_matches_a_full_sort() -> None:
    rng = np.random.default_rng(24796)
    for vocab in (1, 2, 7, 100, 4096):
        for n in (0, 1, 2, 5, 40, vocab, vocab + 3):
            logits = rng.standard_normal(vocab).astype(np.float32) * 4
            _assert_same(top_n_probabilities(logits, n), _by_full_sort(logits, n))
            # Many ties, including at the cut-off: lower ids win, as in the full sort.
            coarse = np.round(logits).astype(np.float32)
            _assert_same(top_n_probabilities(coarse, n), _by_full_sort(coarse, n))
    masked = np.full(50, -np.inf, dtype=np.float32)
    masked[[3, 17]] = [1.0, 2.0]  # what a grammar or logit bias leaves behind
    _assert_same(top_n_probabilities(masked, 3), _by_full_sort(masked, 3))
    row = LogitRow(masked)
    assert row.logprob(17) == pytest.approx(math.log(math.e / (math.e + 1)))
    assert row.logprob(0) == -math.inf


class _SortSpy:
    """Stands in for numpy inside the module and records the length of everything sorted."""

    def __init__(self) -> None:
        self.sorted_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(np, name)
        if name not in ("sort", "argsort", "lexsort", "msort"):
            return real

        def spy(a: Any, *args: Any, **kwargs: Any) -> Any:
            keys = a if name == "lexsort" else (a,)
            self.sorted_sizes.extend(int(np.size(k)) for k in keys)
            return real(a, *args, **kwargs)

        return spy


def test_top_n_sorts_only_the_top_n(monkeypatch: pytest.MonkeyPatch) -> None:
    import refimpl.child.probabilities as probabilities

    spy = _SortSpy()
    monkeypatch.setattr(probabilities, "np", spy)
    logits = np.random.default_rng(1).standard_normal(32000).astype(np.float32)
    top = probabilities.top_n_probabilities(logits, 10)
    assert len(top) == 10
    assert spy.sorted_sizes and max(spy.sorted_sizes) == 10


def test_load_reports_progress_and_can_be_aborted(tiny_models: ModelsDir) -> None:
    pytest.importorskip("llama_cpp")
    from refimpl.child.cli import parse_options
    from refimpl.child.model import LoadAborted, LoadFailed, load_llama

    options = parse_options(["-m", str(tiny_models["tiny-s"].path)])
    seen: list[float] = []

    def record(value: float) -> bool:
        seen.append(value)
        return True

    llama = load_llama(options, record)
    llama.close()
    assert len(seen) > 2 and seen == sorted(seen) and seen[-1] == 1.0  # llama.cpp's own reports
    with pytest.raises(LoadAborted):  # what an exit request during a load does
        load_llama(options, lambda value: value < 0.5)
    corrupt = parse_options(["-m", str(tiny_models["corrupt"].path)])
    with pytest.raises(LoadFailed, match="not within the file bounds"):
        load_llama(corrupt, lambda value: True)


# -- running the child -----------------------------------------------------------------------------


_EOF = object()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Child:
    """A running child: its protocol messages in a queue, its logs kept for failure messages."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.messages: queue.Queue[Any] = queue.Queue()
        self.stdout_logs: list[str] = []
        self.stderr = bytearray()
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        reader = LineReader()
        while chunk := os.read(fd, 65536):
            for line in reader.feed(chunk):
                self._take(parse_line(line))
        for line in reader.finish():
            self._take(parse_line(line))
        self.messages.put(_EOF)

    def _take(self, parsed: Parsed) -> None:
        if isinstance(parsed, LogLine):
            self.stdout_logs.append(parsed.text)
        else:
            self.messages.put(parsed)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            self.stderr += chunk

    def logs(self) -> str:
        return self.stderr.decode(errors="replace")[-4000:]

    def next_message(self, timeout: float) -> Any:
        """The next protocol message (or a Rejection), or _EOF when stdout closed."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no protocol message within {timeout} s; child log:\n{self.logs()}")

    def until_ready(self, timeout: float = START_TIMEOUT) -> list[Any]:
        """Every message up to and including the first ``ready``."""
        deadline = time.monotonic() + timeout
        seen: list[Any] = []
        while True:
            msg = self.next_message(max(0.01, deadline - time.monotonic()))
            assert msg is not _EOF, f"stdout closed before ready: {seen}\n{self.logs()}"
            seen.append(msg)
            if isinstance(msg, ReadyState):
                return seen

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child still running after {timeout} s; log:\n{self.logs()}")

    def join_readers(self) -> None:
        for t in self._threads:
            t.join(timeout=5)


@contextmanager
def running_child(model: Path, *args: str, router: bool = True) -> Iterator[Child]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != ROUTER_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    if router:
        env[ROUTER_ENV] = "0"  # any value: its presence makes a child
    proc = popen(
        [sys.executable, "-m", "refimpl.child", "-m", str(model), "--port", str(port), *args],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        yield Child(proc, port)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


@pytest.fixture(scope="module")
def deps() -> Any:
    """The live tests need llama-cpp-python with its server extra, and httpx."""
    pytest.importorskip("llama_cpp")
    for name in ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "httpx"):
        pytest.importorskip(name)
    import httpx

    return httpx


@pytest.fixture(scope="module")
def tiny_xs(tiny_models: ModelsDir) -> Path:
    return tiny_models["tiny-xs"].path


@pytest.fixture(scope="module")
def child(deps: Any, tiny_xs: Path) -> Iterator[Child]:
    """One ready child for the endpoint tests, alias ``xs-alias``, deterministic by default."""
    with running_child(tiny_xs, "--alias", "xs-alias", "--temp", "0", "--seed", "7") as c:
        c.ready_messages = c.until_ready()  # type: ignore[attr-defined]
        c.ready_after = time.monotonic() - c.started  # type: ignore[attr-defined]
        yield c


@pytest.fixture
def http(deps: Any, child: Child) -> Iterator[Any]:
    with deps.Client(base_url=child.url, timeout=HTTP_TIMEOUT) as client:
        yield client


def _sse_data(response: Any) -> list[str]:
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


# -- startup and the protocol ----------------------------------------------------------------------


@pytest.mark.live
def test_child_announces_loading_then_ready_with_its_models_entry(child: Child,
                                                                   http: Any) -> None:
    messages = child.ready_messages  # type: ignore[attr-defined]
    assert not any(isinstance(m, Rejection) for m in messages), messages
    assert messages[0] == LoadingState()  # payload {} first
    progress = [m.progress for m in messages[1:-1]]
    assert all(isinstance(m, LoadingState) for m in messages[:-1])
    assert progress and all(p is not None for p in progress)
    values = [p.value for p in progress]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
    assert all(p.stages == ("text_model",) and p.current == "text_model" for p in progress)
    info = messages[-1].info
    assert info["id"] == "xs-alias" and info["owned_by"] == "llamacpp"
    assert isinstance(info["created"], int)
    assert info["meta"]["n_ctx_train"] == 512 and info["meta"]["n_params"] > 0
    assert info["meta"]["size"] > 0
    # ready means listening: no retry needed. And the ready entry is the /v1/models entry.
    models = http.get("/v1/models")
    assert models.status_code == 200
    assert models.json()["data"] == [info] and models.json()["object"] == "list"
    assert info["aliases"] == ["xs-alias"] and info["meta"]["n_ctx"] == 512
    assert info["meta"]["ftype"] == "all F32"  # llama.cpp's name for the tiny models' weights
    print(f"\nchild start-to-ready: {child.ready_after:.2f} s")  # type: ignore[attr-defined]


@pytest.mark.live
def test_health_and_props(http: Any) -> None:
    health = http.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    props = http.get("/props").json()
    assert props["model_path"].endswith("tiny-xs.gguf")
    assert props["default_generation_settings"]["n_ctx"] == 512
    assert props["model_ftype"] == "all F32" and props["total_slots"] == 1
    assert "im_start" in props["chat_template"]
    assert re.fullmatch(r"b\d+-[0-9a-f]{7}", props["build_info"])  # llama-server's form
    assert props["is_sleeping"] is False
    assert props["default_generation_settings"]["params"]["temperature"] == 0.0


@pytest.mark.live
def test_chat_completion_plain_and_streamed(http: Any) -> None:
    messages = [{"role": "user", "content": "hello"}]
    plain = http.post("/v1/chat/completions",
                      json={"model": "xs-alias", "messages": messages, "max_tokens": 6})
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert 0 < body["usage"]["completion_tokens"] <= 6
    with http.stream("POST", "/v1/chat/completions",
                     json={"messages": messages, "max_tokens": 6, "stream": True}) as r:
        events = _sse_data(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 3  # role, content..., finish
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # llama-server's first delta has "content" too (null): clients read it on every chunk
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # The streamed text is not compared with the plain one: llama-cpp-python's streaming drops a
    # multi-byte character that the babbling tiny model splits across tokens.
    assert any(c["choices"][0]["delta"].get("content") for c in chunks)


@pytest.mark.live
def test_openai_completion_plain_and_streamed(http: Any) -> None:
    plain = http.post("/v1/completions", json={"prompt": "hello world", "max_tokens": 5})
    assert plain.status_code == 200, plain.text
    text = plain.json()["choices"][0]["text"]
    with http.stream("POST", "/v1/completions",
                     json={"prompt": "hello world", "max_tokens": 5, "stream": True}) as r:
        events = _sse_data(r)
    assert events[-1] == "[DONE]" and len(events) >= 3
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == text


@pytest.mark.live
def test_concurrent_streams_are_served_one_after_the_other_in_full(deps: Any,
                                                                   child: Child) -> None:
    # llama_cpp.server's default would cut the first stream short when a second one waits.
    results: list[list[str]] = []

    def stream() -> None:
        with deps.Client(base_url=child.url, timeout=HTTP_TIMEOUT) as client:
            with client.stream("POST", "/v1/completions",
                               json={"prompt": "hello", "max_tokens": 12, "stream": True}) as r:
                results.append(_sse_data(r))

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=HTTP_TIMEOUT)
    assert len(results) == 3
    for events in results:
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


@pytest.mark.live
def test_native_completion_with_n_probs(http: Any) -> None:
    res = http.post("/completion", json={"prompt": "hello", "n_predict": 4, "n_probs": 5})
    assert res.status_code == 200, res.text
    body = res.json()
    assert isinstance(body["content"], str) and body["stop"] is True
    assert 1 <= body["tokens_predicted"] <= 4
    probs = body["completion_probabilities"]
    assert len(probs) == body["tokens_predicted"]
    for step in probs:
        top = step["top_logprobs"]
        assert len(top) == 5
        logprobs = [t["logprob"] for t in top]
        assert logprobs == sorted(logprobs, reverse=True) and logprobs[0] <= 0.0
        assert sum(math.exp(lp) for lp in logprobs) <= 1.0 + 1e-6
        assert step["id"] == top[0]["id"]  # --temp 0 is greedy: the chosen one is the best
        assert step["logprob"] == pytest.approx(top[0]["logprob"])


@pytest.mark.live
def test_native_completion_streamed(http: Any) -> None:
    plain = http.post("/completion", json={"prompt": "hello", "n_predict": 4}).json()
    with http.stream("POST", "/completion",
                     json={"prompt": "hello", "n_predict": 4, "stream": True}) as r:
        chunks = [json.loads(e) for e in _sse_data(r)]
    assert chunks[-1]["stop"] is True and all(not c["stop"] for c in chunks[:-1])
    assert len(chunks) == plain["tokens_predicted"] + 1
    assert "".join(c["content"] for c in chunks) == plain["content"]


@pytest.mark.live
def test_answers_report_the_settings_in_effect_and_measured_timings(http: Any) -> None:
    """llama-server's ``generation_settings``, ``timings``, ``usage`` and ``/slots`` carry the
    real values: the request's sampling, the prompt the cache held, the tokens generated."""
    ask = {"prompt": "hello", "n_predict": 3, "top_k": 7, "typical_p": 0.9, "stop": ["zz"]}
    first = http.post("/completion", json=ask).json()
    again = http.post("/completion", json=ask).json()
    settings = again["generation_settings"]
    assert (settings["top_k"], settings["typical_p"], settings["stop"]) == (7, 0.9, ["zz"])
    assert settings["n_predict"] == settings["max_tokens"] == 3
    assert settings["temperature"] == 0.0 and settings["seed"] == 7  # the command line's
    assert again["prompt"] == "<s> hello"  # the prompt's tokens written out, BOS included
    n_prompt = again["tokens_evaluated"]
    assert first["timings"]["cache_n"] == 0 or first["timings"]["cache_n"] < n_prompt
    timings = again["timings"]  # the same prompt again: all but its last token were cached
    assert timings["cache_n"] == n_prompt - 1 and timings["prompt_n"] == 1
    assert timings["predicted_n"] == again["tokens_predicted"] == 3
    assert timings["prompt_ms"] > 0 and timings["predicted_ms"] >= 0
    assert again["tokens_cached"] == n_prompt + 3 - 1  # the last token is sampled, not decoded
    slot = http.get("/slots").json()[0]
    assert slot["params"]["top_k"] == 7 and "stop" not in slot["params"]
    assert slot["n_prompt_tokens"] == n_prompt and slot["next_token"][0]["n_decoded"] == 3
    chat = http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).json()
    assert chat["system_fingerprint"] == http.get("/props").json()["build_info"]
    assert chat["usage"]["completion_tokens"] == chat["timings"]["predicted_n"]
    assert chat["usage"]["prompt_tokens"] == (chat["timings"]["prompt_n"]
                                              + chat["timings"]["cache_n"])
    assert "logprobs" not in chat["choices"][0]


@pytest.mark.live
def test_endpoints_llama_server_serves_only_when_turned_on_answer_501(http: Any) -> None:
    for method, path in (("GET", "/metrics"), ("POST", "/v1/embeddings"),
                         ("POST", "/embeddings")):
        res = http.request(method, path, json={"input": "hello"} if method == "POST" else None)
        assert res.status_code == 501, (path, res.text)
        assert res.json()["error"]["type"] == "not_supported_error"


@pytest.mark.live
def test_tokenize_detokenize_round_trip(http: Any) -> None:
    text = "hello world, how are you?"
    tokens = http.post("/tokenize", json={"content": text}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    back = http.post("/detokenize", json={"tokens": tokens})
    assert back.status_code == 200
    assert back.json()["content"].strip() == text  # SPM turns the first piece's "▁" into a space
    with_bos = http.post("/tokenize", json={"content": text, "add_special": True}).json()
    assert with_bos["tokens"][1:] == tokens


@pytest.mark.live
@pytest.mark.parametrize(("path", "payload"), [
    ("/v1/chat/completions", b"{not json"),
    ("/v1/chat/completions", b"[1, 2]"),
    ("/v1/chat/completions", b'{"max_tokens": 3}'),
    ("/v1/chat/completions", b'{"messages": "hello"}'),
    ("/v1/completions", b'{"max_tokens": 3}'),
    ("/completion", b'{"n_predict": 3}'),
    ("/completion", b"{oops"),
    ("/tokenize", b'{"text": "hello"}'),
    ("/detokenize", b'{"tokens": [99999999]}'),
])
def test_bad_requests_get_openai_style_400(http: Any, path: str, payload: bytes) -> None:
    res = http.post(path, content=payload, headers={"content-type": "application/json"})
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]


@pytest.mark.live
def test_unknown_path_is_404(http: Any) -> None:
    res = http.get("/no/such/thing")
    assert res.status_code == 404  # llama-server's body, in its key order
    assert res.json() == {"error": {"message": "File Not Found", "type": "not_found_error",
                                    "code": 404}}


# -- exit, sleep, failure, flags -------------------------------------------------------------------


@pytest.mark.live
def test_exit_command_exits_zero(deps: Any, tiny_xs: Path) -> None:
    with running_child(tiny_xs) as c:
        c.until_ready()
        c.send(EXIT_COMMAND)
        sent = time.monotonic()
        assert c.wait(EXIT_TIMEOUT) == 0
        assert time.monotonic() - sent < EXIT_TIMEOUT
        c.join_readers()
        assert c.next_message(1.0) is _EOF  # nothing after ready


@pytest.mark.live
def test_stdin_eof_means_the_router_died(deps: Any, tiny_xs: Path) -> None:
    with running_child(tiny_xs) as c:
        c.until_ready()
        c.close_stdin()
        assert c.wait(EXIT_TIMEOUT) == 0


@pytest.mark.live
def test_sleeps_when_idle_and_wakes_on_a_request(deps: Any, tiny_xs: Path) -> None:
    httpx = deps
    with running_child(tiny_xs, "--sleep-idle-seconds", "1") as c:
        c.until_ready()
        assert isinstance(c.next_message(5.0), SleepingState)
        with httpx.Client(base_url=c.url, timeout=HTTP_TIMEOUT) as http:
            # These must not wake it (as in llama-server).
            assert http.get("/health").status_code == 200
            assert http.get("/props").json()["is_sleeping"] is True
            assert http.get("/v1/models").status_code == 200
            assert c.messages.empty()
            res = http.post("/completion", json={"prompt": "hello", "n_predict": 2})
            assert res.status_code == 200, res.text
            woke = c.next_message(1.0)
            assert isinstance(woke, ReadyState) and woke.info == {}
            assert http.get("/props").json()["is_sleeping"] is False
        # And it goes back to sleep after the next idle second.
        assert isinstance(c.next_message(5.0), SleepingState)
        c.send(EXIT_COMMAND)
        assert c.wait(EXIT_TIMEOUT) == 0


@pytest.mark.live
def test_corrupt_model_exits_nonzero_without_ready(deps: Any, tiny_models: ModelsDir) -> None:
    with running_child(tiny_models["corrupt"].path) as c:
        code = c.wait(START_TIMEOUT)
        c.join_readers()
        seen = []
        while (msg := c.next_message(1.0)) is not _EOF:
            seen.append(msg)
        assert code != 0
        assert not any(isinstance(m, ReadyState) for m in seen), seen
        assert seen and seen[0] == LoadingState()
        assert "corrupt.gguf" in c.logs()  # says which file and why


@pytest.mark.live
def test_missing_model_file_exits_nonzero(deps: Any, tmp_path: Path) -> None:
    with running_child(tmp_path / "absent.gguf") as c:
        assert c.wait(START_TIMEOUT) != 0
        assert "absent.gguf" in c.logs()


@pytest.mark.live
@pytest.mark.parametrize(("args", "expected"), [
    (("--no-such-flag",), "--no-such-flag"),
    (("--api-key", "secret"), "--api-key"),
])
def test_bad_flags_exit_2_with_a_message(tmp_path: Path, args: tuple[str, ...],
                                         expected: str) -> None:
    with running_child(tmp_path / "any.gguf", *args) as c:
        assert c.wait(10.0) == 2
        c.join_readers()
        log = c.logs()
        assert expected in log and "Traceback" not in log


@pytest.mark.live
def test_busy_port_exits_nonzero_before_loading(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with running_child(tmp_path / "any.gguf", "--port", str(port)) as c:
            assert c.wait(10.0) == 1
            c.join_readers()
            assert "cannot listen" in c.logs() and "Traceback" not in c.logs()


@pytest.mark.live
def test_without_the_router_env_it_is_a_plain_server(deps: Any, tiny_xs: Path) -> None:
    httpx = deps
    with running_child(tiny_xs, router=False) as c:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=c.url, timeout=2.0) as http:
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert c.proc.poll() is None, c.logs()
                assert time.monotonic() < deadline, c.logs()
                time.sleep(0.05)
            c.close_stdin()  # no router: stdin means nothing
            with pytest.raises(subprocess.TimeoutExpired):  # it does not exit on EOF
                c.proc.wait(timeout=0.3)
            assert http.get("/health").status_code == 200
        assert c.messages.empty()  # no protocol lines at all
