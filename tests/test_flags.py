"""llama-server's whole command line (issue 13): every flag of the table, by the router and the
child; the environment as llama-server reads it; a typical llama-server command line, live."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conformance.routers import Router, Target
from fixtures.procs import popen
from refimpl import flags
from refimpl.child import cli as child_cli
from refimpl.router import options

ROOT = Path(__file__).resolve().parent.parent
TABLE = json.loads((ROOT / "refimpl" / "llama_flags.json").read_text())

# A value of the right kind for each value hint that is not a list of choices.
NUMBERS = {"N", "SEED", "P", "L", "SECONDS", "SIMILARITY", "INDEX", "PORT", "<0...100>"}
SAMPLES = {"lo-hi": "0-1", "N0,N1,N2,...": "3,1", "MiB0,MiB1,MiB2,...": "1024",
           "P0,P1,...": "0.5,0.25", "KEY=TYPE:VALUE,...": "tokenizer.ggml.add_bos_token=bool:false",
           "FNAME:SCALE,...": "a.gguf:0.5", "TOKEN_ID(+/-)BIAS": "15043+1",
           "<tensor name pattern>=<buffer type>,...": "exps=CPU", "START END": "0 1"}


def sample(flag: flags.Flag, tmp_path: Path | None = None) -> list[str]:
    if flag.key == "--api-key-file" and tmp_path is not None:  # read at start: it must exist
        (tmp_path / "keys").write_text("k\n")
        return [str(tmp_path / "keys")]
    if flag.choices:
        return [flag.choices[0]]
    if flag.value is None:
        return []
    if flag.value in NUMBERS:
        return ["1"]
    return SAMPLES.get(flag.value, "x").split()


def every_name() -> list[tuple[str, flags.Flag]]:
    return [(name, f) for f in flags.FLAGS for name in (*f.names, *f.negative)]


def test_the_table_is_llama_servers_whole_command_line() -> None:
    assert TABLE["version"] == "11434.0.0" and TABLE["regenerate"] == "scripts/gen-flag-table"
    assert len(flags.FLAGS) == 255
    names = [name for name, _ in every_name()]
    assert len(names) == len(set(names))
    # spot checks against llama.cpp's common/arg.cpp
    assert flags.lookup("-nkvo") == (flags.BY_KEY["--kv-offload"], False)
    assert flags.lookup("--no-host") == (flags.BY_KEY["--no-host"], True)
    assert flags.BY_KEY["--control-vector-layer-range"].arity == 2
    assert flags.BY_KEY["--flash-attn"].arity == 1
    assert flags.BY_KEY["--api-key"].env == "LLAMA_API_KEY"
    assert flags.BY_KEY["--hf-token"].env == "HF_TOKEN"
    assert flags.lookup("--ctx_size") == (flags.BY_KEY["--ctx-size"], True)


def test_the_generator_reads_the_table_it_was_written_from() -> None:
    """The checked-in rows are what the generator makes of the README's rows."""
    loader = importlib.machinery.SourceFileLoader("gen", str(ROOT / "scripts" / "gen-flag-table"))
    spec = importlib.util.spec_from_loader("gen", loader)
    assert spec is not None
    gen = importlib.util.module_from_spec(spec)
    loader.exec_module(gen)
    readme = ("<!-- HELP_START -->\n### Common params\n\n| Argument | Explanation |\n"
              "| -------- | ----------- |\n"
              "| `-fa, --flash-attn [on\\|off\\|auto]` | y<br/>(env: LLAMA_ARG_FLASH_ATTN) |\n"
              "| `-kvo, --kv-offload, -nkvo, --no-kv-offload` | x<br/>(env: LLAMA_ARG_KV_OFFLOAD) |\n"
              "| `--control-vector-layer-range START END` | z |\n<!-- HELP_END -->\n")
    wanted = ("--flash-attn", "--kv-offload", "--control-vector-layer-range")
    assert gen.parse_readme(readme) == [r for r in TABLE["flags"] if r["names"][-1] in wanted]


@pytest.mark.parametrize("name, flag", every_name(), ids=[n for n, _ in every_name()])
def test_the_router_accepts_every_flag(name: str, flag: flags.Flag, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = [name, *sample(flag, tmp_path)]
    if name in ("-h", "--help", "--version"):
        with pytest.raises(SystemExit) as info:
            options.parse(argv, env={})
        assert info.value.code == 0
        if name == "--version":  # llama-server's words, to stderr
            assert capsys.readouterr().err.startswith("version: refimpl (build 11434, commit ")
        return
    if flag.key in options.REFUSED:
        with pytest.raises(SystemExit) as info:
            options.parse(argv, env={})
        assert info.value.code == 2 and name in capsys.readouterr().err
        return
    opts = options.parse(argv, env={})
    forwarded = flag.key not in options.NOT_FORWARDED
    assert (opts.child_args[:len(argv)] == argv) == forwarded, opts.child_args
    acted = flag.key in options.ROUTER_ACTS_ON | child_cli.ACTS_ON
    assert (opts.no_effect == [name]) != acted, opts.no_effect


@pytest.mark.parametrize("name, flag", every_name(), ids=[n for n, _ in every_name()])
def test_the_child_accepts_every_flag(name: str, flag: flags.Flag,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = [name, *sample(flag)]
    if flag.key != "--model":
        argv = ["-m", "model.gguf", *argv]
    if flag.key in child_cli._REFUSED:
        with pytest.raises(SystemExit) as info:
            child_cli.parse_options(argv, env={})
        assert info.value.code == 2 and name in capsys.readouterr().err
        return
    if name in ("-h", "--help", "--version"):
        with pytest.raises(SystemExit) as info:
            child_cli.parse_options(argv, env={})
        assert info.value.code == 0
        return
    opts = child_cli.parse_options(argv, env={})
    assert (name in opts.no_effect) == (flag.key not in child_cli.ACTS_ON), opts.no_effect


@pytest.mark.parametrize("flag", [f for f in flags.FLAGS if f.env],
                         ids=[str(f.env) for f in flags.FLAGS if f.env])
def test_every_variable_is_read_by_the_router_and_the_child(flag: flags.Flag,
                                                           tmp_path: Path) -> None:
    value = "true" if flag.arity == 0 else " ".join(sample(flag, tmp_path))
    env = {str(flag.env): value}
    opts = options.parse([], env=env)
    assert (str(flag.env) in opts.no_effect) == (
        flag.key not in options.ROUTER_ACTS_ON | child_cli.ACTS_ON | options.ACTS_FROM_ENV)
    if flag.key not in child_cli._REFUSED:
        child = child_cli.parse_options([] if flag.key == "--model" else ["-m", "m.gguf"],
                                        env=env)
        assert (str(flag.env) in child.no_effect) == (flag.key not in child_cli.ACTS_ON)


def test_the_routers_own_variables_take_effect_and_the_command_line_wins() -> None:
    env = {"LLAMA_ARG_PORT": "9001", "LLAMA_ARG_MODELS_MAX": "3", "LLAMA_ARG_HOST": "::1",
           "LLAMA_ARG_MODELS_AUTOLOAD": "disabled", "LLAMA_ARG_OFFLINE": "1",
           "LLAMA_ARG_MODELS_DIR": "/m", "LLAMA_API_KEY": "k"}
    opts = options.parse([], env=env)
    assert (opts.port, opts.models_max, opts.host, opts.models_autoload, opts.offline,
            opts.models_dir, opts.api_key) == (9001, 3, "::1", False, True, "/m", "k")
    assert options.parse(["--port", "9002", "--models-autoload"], env=env).port == 9002
    assert options.parse(["--models-autoload"], env=env).models_autoload is True
    assert options.parse([], env={"LLAMA_ARG_OFFLINE": "0"}).offline is False


def test_the_childs_own_variables_take_effect_and_the_command_line_wins() -> None:
    env = {"LLAMA_ARG_MODEL": "/m.gguf", "LLAMA_ARG_CTX_SIZE": "99", "LLAMA_ARG_TEMPERATURE":
           "0.5", "LLAMA_ARG_N_GPU_LAYERS": "all", "LLAMA_ARG_N_PARALLEL": "-1"}
    opts = child_cli.parse_options([], env=env)
    assert (str(opts.model), opts.ctx_size, opts.temp, opts.n_gpu_layers, opts.parallel) == \
        ("/m.gguf", 99, 0.5, -1, 1)
    assert child_cli.parse_options(["-c", "7"], env=env).ctx_size == 7


@pytest.mark.parametrize("argv, says", [
    (["--no-such-flag"], "invalid argument: --no-such-flag"),
    (["--ctx-size"], "expected value"),
    (["--temperature", "warm"], "--temperature"),
    (["--api-key-file", "keys.txt"], "--api-key-file"),
])
def test_what_llama_server_refuses_the_router_refuses(argv: list[str], says: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        options.parse(argv, env={})
    assert info.value.code == 2 and says in capsys.readouterr().err


def test_a_bad_switch_variable_is_refused_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        options.parse([], env={"LLAMA_ARG_JINJA": "maybe"})
    assert "LLAMA_ARG_JINJA" in capsys.readouterr().err


def test_what_the_router_keeps_from_its_children_is_upstreams() -> None:
    """server-models.cpp: unset_reserved_args, --log-file; -m, -a and -hf name one model."""
    opts = options.parse(["-m", "a.gguf", "-a", "x", "-hf", "u/r", "--log-file", "l",
                          "--mmproj", "p", "-c", "64", "--no-slots"], env={})
    assert opts.child_args == ["-c", "64", "--no-slots"]


def test_the_child_starts_with_llama_servers_flags_and_lists_what_it_ignores(
        tiny_models: Any) -> None:
    """The flags parse in the real process (a bad argv exits 2): it gets as far as its port,
    taken here so that it stops there, and lists once what it ignores."""
    model = tiny_models[tiny_models.names[0]].path
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
        proc = popen(
            [sys.executable, "-m", "refimpl.child", "-m", str(model), "--no-jinja",
             "--no-slots", "-fa", "off", "--port", str(taken.getsockname()[1])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, cwd=ROOT, env=env)
        _, err = proc.communicate(timeout=60)  # it exits by itself: the port is taken
    assert proc.returncode == 1, err
    assert err.count("accepted, no effect here: --no-jinja -fa") == 1
    assert "cannot listen" in err


TYPICAL = ["--temp", "0.8", "--seed", "42", "--batch-size", "16", "--no-slots", "--ctx-size",
           "1024", "--parallel", "1", "--n-predict", "16", "--no-jinja"]


@pytest.mark.live
def test_a_typical_llama_server_command_line_loads_and_answers(tiny_models: Any,
                                                                tmp_path: Path) -> None:
    router = Router(Target(None), [*TYPICAL, "--models-dir", str(tiny_models.root),
                                   "--models-max", "1"], tmp_path / "router.log")
    try:
        model = tiny_models.names[0]
        r = router.chat(model, max_tokens=4)
        assert r.status_code == 200, (r.text, router.log())
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
        log = router.log()
        assert log.count("accepted, no effect here: --no-jinja") == 1, log
        props = router.client.get("/props").json()
        assert re.fullmatch(r"b\d+-[0-9a-f]{7}", props["build_info"]), props
        child_props = router.client.get("/props", params={"model": model}).json()
        assert child_props["build_info"] == props["build_info"] == flags.BUILD_INFO
    finally:
        assert not router.stop()
