"""Hostile files and names (issue 12, "Files and names"), and the API key from the environment.

- Removing a cache model never follows a link out of the cache: links go, their targets stay,
  except the repo's own blobs.
- A bad preset (a name of two models, a stop-timeout that is not a number of seconds) or a bad
  numeric flag stops the router at start with one line naming the file, section and key (or the
  flag), and exit code 2, like argparse.
- ``--child-cmd`` placeholders are filled in one pass, and model paths reach a child absolute, so
  a file named like a flag (``-v.gguf``) or like a placeholder (``x$port.gguf``) is just a file.
- What the router logs has its control characters escaped: a name cannot forge a log line.
- A download name is ``user/repo[:TAG]`` in full (``\\Z``, not ``$``), as the hub library takes
  it; anything else is a 400 before the hub is asked.
- ``LLAMA_API_KEY`` is read when ``--api-key`` is not given; an empty key is refused at start.

Unit tests first; the live ones use fake children (``fixtures/fake_child.py``) and the local hub.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conformance.routers import ROOT, Router, Target
from fixtures.hostile import hostile_gguf
from fixtures.hub import LocalHub
from fixtures.procs import children_of, cmdline
from refimpl.cache import BadName, list_cached, remove_cached, split_name
from refimpl.router import main as router_main
from refimpl.router import options
from refimpl.router.processes import child_command
from refimpl.router.sources import ModelEntry, SourceError, card_of, load_sources

FAKE = "{python} -m fixtures.fake_child"


# -- 1. removal stays inside the cache ----------------------------------------------------------

def _hub_layout(root: Path, repo: str, files: dict[str, bytes], commit: str = "c" * 40) -> Path:
    """A repo folder as huggingface_hub writes it: snapshot files are relative links to blobs."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "blobs").mkdir()
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for i, (name, data) in enumerate(files.items()):
        (folder / "blobs" / f"{i:064x}").write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", f"{i:064x}"))
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the cache with model files of the same tag, and a sub-folder."""
    folder = tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    for path in (folder / "victim-F16.gguf", folder / "sub" / "deep-F16.gguf",
                 folder / "x.incomplete"):
        path.write_bytes(b"precious")
    return folder


def _still_there(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_remove_does_not_follow_a_snapshot_link_out_of_the_cache(tmp_path: Path,
                                                                   outside: Path) -> None:
    root = tmp_path / "cache"
    folder = _hub_layout(root, "u/a-GGUF", {"a-F16.gguf": b"1", "a-Q8_0.gguf": b"2"})
    before = _still_there(outside)
    (folder / "snapshots" / "evil").symlink_to(outside, target_is_directory=True)
    assert remove_cached(root, "u/a-GGUF:F16")
    assert _still_there(outside) == before
    assert [m.name for m in list_cached(root)] == ["u/a-GGUF:Q8_0"]  # its own F16 blob went
    assert sorted(p.name for p in (folder / "blobs").iterdir()) == [f"{1:064x}"]
    assert remove_cached(root, "u/a-GGUF")  # the whole repo: the link goes, not its target
    assert not folder.exists() and _still_there(outside) == before


def test_remove_does_not_follow_file_links_or_a_blobs_link_out(tmp_path: Path,
                                                                outside: Path) -> None:
    root = tmp_path / "cache"
    folder = _hub_layout(root, "u/a-GGUF", {"a-Q8_0.gguf": b"2"})
    snapshot = folder / "snapshots" / ("c" * 40)
    (snapshot / "b-F16.gguf").symlink_to(outside / "victim-F16.gguf")  # a file link out
    (snapshot / "sub").symlink_to(outside / "sub", target_is_directory=True)
    before = _still_there(outside)
    assert remove_cached(root, "u/a-GGUF:F16")
    assert _still_there(outside) == before
    assert not (snapshot / "b-F16.gguf").is_symlink()  # the link itself is gone
    # blobs/ itself a link out: neither its *.incomplete nor its files are touched
    other = _hub_layout(root, "u/b-GGUF", {})
    (other / "blobs").rmdir()
    (other / "blobs").symlink_to(outside, target_is_directory=True)
    (other / "snapshots" / ("c" * 40) / "b-F16.gguf").symlink_to(
        Path("..", "..", "blobs", "victim-F16.gguf"))
    assert remove_cached(root, "u/b-GGUF:F16")
    assert _still_there(outside) == before
    # the repo folder itself a link out: the link goes, the folder it names stays
    (root / "models--u--c-GGUF").symlink_to(outside, target_is_directory=True)
    remove_cached(root, "u/c-GGUF")
    assert not (root / "models--u--c-GGUF").is_symlink() and _still_there(outside) == before


def test_a_failed_download_without_a_snapshot_is_cleaned_up(tmp_path: Path,
                                                             outside: Path) -> None:
    """The download child's cleanup: only blobs/*.incomplete, no snapshots/ yet."""
    blobs = tmp_path / "cache" / "models--u--a-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "0123.incomplete").write_bytes(b"partial")
    (blobs / "link.incomplete").symlink_to(outside / "x.incomplete")
    assert remove_cached(tmp_path / "cache", "u/a-GGUF:F16")
    assert not blobs.parent.exists()
    assert (outside / "x.incomplete").read_bytes() == b"precious"


def test_listing_ignores_what_links_out_of_the_cache(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "cache"
    folder = _hub_layout(root, "u/a-GGUF", {"a-Q8_0.gguf": b"2"})
    (folder / "snapshots" / ("c" * 40) / "b-F16.gguf").symlink_to(outside / "victim-F16.gguf")
    evil = _hub_layout(root, "u/e-GGUF", {}, commit="evil")
    (evil / "snapshots" / "evil").rmdir()
    (evil / "snapshots" / "evil").symlink_to(outside, target_is_directory=True)
    assert [m.name for m in list_cached(root)] == ["u/a-GGUF:Q8_0"]


# -- 6. download names --------------------------------------------------------------------------

HF_REPO_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")


@pytest.mark.parametrize("name", [
    "user/repo\n", "user/repo:F16\n", "user/repo\n:F16", "user/a--b", "user/-a", "user/a-",
    "user/a.", "user/repo.git", "us--er/repo", "user/a_b..c", "user/" + "a" * 97, "user/é",
    "user/repo:F16\x00", " user/repo", "user/repo ",
])
def test_names_the_hub_library_refuses_are_bad_names(name: str) -> None:
    with pytest.raises(BadName):
        split_name(name)


@given(st.one_of(st.text(), st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,8}/[a-z0-9_.-]{1,8}"
                                          r"(:[A-Za-z0-9_]{1,4})?\n?\Z", fullmatch=True)))
@example("user/repo\n")
@example("user/a--b:F16")
@settings(max_examples=500)
def test_split_name_returns_a_valid_name_or_raises_bad_name(text: str) -> None:
    """For any text: a valid (repo, tag) that round-trips and the hub library accepts, or
    BadName; never anything else."""
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined, unused-ignore]
    try:
        repo, tag = split_name(text)
    except BadName:
        return
    assert HF_REPO_ID.fullmatch(repo.split("/")[0]) and HF_REPO_ID.fullmatch(repo.split("/")[1])
    assert tag is None or re.fullmatch(r"[A-Z0-9_]{1,64}", tag)
    validate_repo_id(repo)  # raises HFValidationError for what the hub library refuses
    assert split_name(repo if tag is None else f"{repo}:{tag}") == (repo, tag)


# -- 4. child command lines ---------------------------------------------------------------------

def test_child_command_fills_placeholders_in_one_pass(tmp_path: Path) -> None:
    entry = ModelEntry("x$port", tmp_path / "x$port.gguf", "models_dir")
    cmd = child_command("serve -m $model --port $port --alias $alias", entry.name, card_of(entry), 42149)
    assert cmd == ["serve", "-m", str(tmp_path / "x$port.gguf"), "--port", "42149",
                   "--alias", "x$port"]
    entry = ModelEntry("$host", tmp_path / "$alias.gguf", "models_dir")
    cmd = child_command("serve -m $model --alias $alias", entry.name, card_of(entry), 1)
    assert cmd == ["serve", "-m", str(tmp_path / "$alias.gguf"), "--alias", "$host"]


@pytest.mark.parametrize("file", ["-v.gguf", "--host=0.0.0.0.gguf", "--port.gguf"])
def test_a_file_named_like_a_flag_is_passed_as_a_path(file: str, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    name = file[:-len(".gguf")]
    entry = ModelEntry(name, Path(file), "models_dir", mmproj=Path("-mmproj.gguf"))
    for template in ("child", "child -m $model --port $port"):
        cmd = child_command(template, name, card_of(entry), 4000)
        paths = [w for w in cmd if w.endswith(".gguf")]
        assert paths and all(w.startswith("/") and os.path.isabs(w) for w in paths), cmd
        assert str(tmp_path / file) in cmd
    cmd = child_command("child", name, card_of(entry), 4000)
    # the name as the value of --alias, in the one form an argparse child cannot take as a flag
    assert f"--alias={name}" in cmd and "--alias" not in cmd, cmd


# -- 2 and 3. start-up: presets and numeric flags -----------------------------------------------

def _preset(tmp_path: Path, text: str) -> Path:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    path = tmp_path / "models.ini"
    path.write_text(text.replace("MODEL", str(model)))
    return path


@pytest.mark.parametrize("text, section, key", [
    ("[a]\nmodel = MODEL\nalias = shared\n\n[b]\nmodel = MODEL\nalias = shared\n", "[b]", "alias"),
    ("[a]\nmodel = MODEL\nalias = b\n\n[b]\nmodel = MODEL\n", "[a]", "alias"),
    ("[a]\nmodel = MODEL\nstop-timeout = -1\n", "[a]", "stop-timeout"),
    ("[a]\nmodel = MODEL\nstop-timeout = nan\n", "[a]", "stop-timeout"),
    ("[a]\nmodel = MODEL\nstop-timeout = inf\n", "[a]", "stop-timeout"),
    ("[a]\nmodel = MODEL\nstop-timeout = 1e999\n", "[a]", "stop-timeout"),
    ("[a]\nmodel = MODEL\nctx-size = nan\n", "[a]", "ctx-size"),
    ("[*]\ntemp = inf\n[a]\nmodel = MODEL\n", "[*]", "temp"),
    ("[a]\nmodel = MODEL\nLLAMA_ARG_CTX_SIZE = 1.5\n", "[a]", "LLAMA_ARG_CTX_SIZE"),
])
def test_bad_preset_is_one_clear_error(tmp_path: Path, text: str, section: str, key: str) -> None:
    preset = _preset(tmp_path, text)
    with pytest.raises(SourceError) as info:
        load_sources(None, str(preset), [])
    message = str(info.value)
    assert str(preset) in message and section in message and key in message, message
    assert "\n" not in message


def test_a_model_alias_equal_to_a_models_dir_name_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "tiny.gguf").write_bytes(b"GGUF")
    preset = _preset(tmp_path, "[a]\nmodel = MODEL\nalias = tiny\n")
    with pytest.raises(SourceError, match=r"\[a\] alias"):
        load_sources(str(tmp_path / "dir"), str(preset), [])
    # a section that configures the models-dir model itself is no collision
    preset.write_text("[tiny]\nalias = t, tiny\n")
    [entry] = load_sources(str(tmp_path / "dir"), str(preset), [])
    assert entry.aliases == ("t",)


def _start(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LLAMA_CACHE=str(tmp_path / "no-cache"))
    env.pop("LLAMA_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "refimpl", "--port", "1", *argv],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
                          check=False)


def test_start_up_with_a_shared_alias_exits_2_with_one_line(tmp_path: Path) -> None:
    preset = _preset(tmp_path, "[a]\nmodel = MODEL\nalias = shared\n\n"
                               "[b]\nmodel = MODEL\nalias = shared\n")
    done = _start(["--models-preset", str(preset)], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert str(preset) in line and "[b]" in line and "alias" in line and "'shared'" in line


@pytest.mark.parametrize("argv, flag", [
    (["--stop-timeout", "nan"], "--stop-timeout"), (["--stop-timeout", "inf"], "--stop-timeout"),
    (["--stop-timeout", "-1"], "--stop-timeout"), (["--stop-timeout", "1e999"], "--stop-timeout"),
    (["--sleep-idle-seconds", "nan"], "--sleep-idle-seconds"),
    (["--sleep-idle-seconds", "-inf"], "--sleep-idle-seconds"),
    (["--sleep-idle-seconds", "-2"], "--sleep-idle-seconds"),
    (["--models-memory-margin", "-1"], "--models-memory-margin"),
    (["--models-max", "-1"], "--models-max"), (["--port", "70000"], "--port"),
    (["--device-memory", "host=" + "9" * 400 + "G"], "--device-memory"),
    (["-c", "nan"], "-c"), (["--temp", "inf"], "--temp"), (["--ctx-size=1e3"], "--ctx-size"),
])
def test_bad_numeric_flag_exits_2_naming_it(argv: list[str], flag: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        options.parse(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv", [
    ["--stop-timeout", "0"], ["--stop-timeout", "2.5"], ["--sleep-idle-seconds", "-1"],
    ["--sleep-idle-seconds", "30"], ["--models-memory-margin", "0"], ["-c", "1024"],
    ["--temp", "-0.5"], ["--seed", "-1"], ["-ngl", "auto"], ["--ctx-size=512"],
])
def test_good_numeric_flags_are_taken(argv: list[str]) -> None:
    options.parse(argv)


# -- 7. the API key -----------------------------------------------------------------------------

def test_api_key_comes_from_the_environment_and_the_flag_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert options.parse([]).api_key is None
    monkeypatch.setenv("LLAMA_API_KEY", "from-env")
    assert options.parse([]).api_key == "from-env"
    assert options.parse(["--api-key", "flag"]).api_key == "flag"


@pytest.mark.parametrize("argv, env, names", [
    (["--api-key", ""], {}, "--api-key"), (["--api-key", "  "], {}, "--api-key"),
    ([], {"LLAMA_API_KEY": ""}, "LLAMA_API_KEY"), (["--api-key", "a\nb"], {}, "--api-key"),
])
def test_an_empty_api_key_is_refused(argv: list[str], env: dict[str, str], names: str,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as info:
        options.parse(argv)
    assert info.value.code == 2
    assert names in capsys.readouterr().err


def test_several_api_keys_as_llama_server_takes_them(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``--api-key`` is a comma-separated list (a key may be quoted, CSV), and
    ``--api-key-file`` adds its lines but empty ones and ``#`` comments (common/arg.cpp)."""
    assert options.parse(["--api-key", 'a,,"b,c", d']).api_keys == ("a", "b,c", " d")
    keys = tmp_path / "keys"
    keys.write_text("# the team's keys\nk1\n\nk2\n")
    assert options.parse(["--api-key", "a", "--api-key-file", str(keys)]).api_keys == \
        ("a", "k1", "k2")
    assert options.parse(["--api-key-file", str(keys)]).api_keys == ("k1", "k2")
    assert options.parse([]).api_keys == ()
    keys.write_text("# nothing but comments\n")
    for bad in (keys, tmp_path / "missing"):
        with pytest.raises(SystemExit) as info:
            options.parse(["--api-key-file", str(bad)])
        assert info.value.code == 2 and str(bad) in capsys.readouterr().err
    keys.write_text("k\n")
    assert "--api-key-file" not in options.parse(["--api-key-file", str(keys)]).no_effect


def test_every_key_opens_the_router_and_no_other() -> None:
    """The middleware takes any of the keys, in constant time per key."""
    import anyio

    from refimpl.core.config import RouterConfig
    from refimpl.core.router import RouterCore
    from refimpl.router import app as router_app
    from refimpl.router.driver import Driver

    driver = Driver(RouterCore(RouterConfig(models=())), spawner=None)  # type: ignore[arg-type]
    app = router_app.RouterApp(driver, options.RouterOptions(api_keys=("k1", "k2"))).app

    async def status(key: str | None) -> int:
        headers = [(b"authorization", b"Bearer " + key.encode())] if key is not None else []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/props", "raw_path": b"/props",
                 "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        got: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                got.append(message["status"])
        await app(scope, receive, send)
        return got[0]

    async def main() -> list[int]:
        return [await status(k) for k in ("k1", "k2", "k3", "k1,k2", "", None)]

    assert anyio.run(main) == [200, 200, 401, 401, 401, 401]


def test_the_hub_token_reaches_the_download_child(tmp_path: Path) -> None:
    """``--hf-token`` (or ``HF_TOKEN``) is the download child's ``HF_TOKEN``, as upstream hands
    its token to the download; without it the child inherits the router's environment."""
    import anyio

    from refimpl.core.commands import Spawn
    from refimpl.router.processes import make_download_spawner

    assert options.parse(["--hf-token", "hf_x"]).hf_token == "hf_x"
    assert "--hf-token" not in options.parse(["--hf-token", "hf_x"]).no_effect
    template = f"{sys.executable} -c \"import os; print(os.environ.get('HF_TOKEN'))\""

    async def token_seen(token: str | None) -> bytes:
        spawn = make_download_spawner(template, 1, lambda line: None, token)
        child = await spawn(Spawn(1, "u/r:Q8_0", download=True))
        out = b""
        while data := await child.read():
            out += data
        await child.wait()
        return out.strip()

    assert anyio.run(token_seen, "hf_secret") == b"hf_secret"
    os.environ.pop("HF_TOKEN", None)
    assert anyio.run(token_seen, None) == b"None"


# -- 5. the log ---------------------------------------------------------------------------------

def test_log_escapes_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    router_main.log("model 'a\n[router] forged'\r\x1b[31m\x00\u2028 \\n\tok")
    err = capsys.readouterr().err
    assert err == "model 'a\\n[router] forged'\\r\\x1b[31m\\x00\\u2028 \\n\tok\n"
    from refimpl.router.driver import printable
    assert printable(printable("a\nb")) == printable("a\nb") == "a\\nb"  # escaped once


# -- live: the router with fake children --------------------------------------------------------

def _router(args: list[str], log: Path, child_cmd: str = FAKE, **kw: Any) -> Router:
    return Router(Target(None, child_cmd), args, log, **kw)


def _stop(router: Router) -> None:
    leftovers = router.stop()
    assert not leftovers, f"children outlived the router: {leftovers}"


@pytest.mark.live
def test_a_newline_in_a_model_name_forges_no_log_line(tiny_models: Any, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    name = "a\n[router] forged"
    (folder / f"{name}.gguf").symlink_to(tiny_models["tiny-xs"].path)
    router = _router(["--models-dir", str(folder), "--offline"], tmp_path / "router.log")
    try:
        r = router.chat(name)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == name
    finally:
        _stop(router)
    lines = (tmp_path / "router.log").read_text().splitlines()
    assert not [line for line in lines if line.startswith("[router] forged")], lines
    assert any("a\\n[router] forged" in line for line in lines), lines


@pytest.mark.live
@pytest.mark.parametrize("child_cmd", [
    FAKE, FAKE + " -m $model --port $port --host $host --alias=$alias"])
def test_files_named_like_flags_or_placeholders_load_and_answer(
        tiny_models: Any, tmp_path: Path, child_cmd: str) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    names = ["-v", "--host=0.0.0.0", "x$port", "$host"]
    for name in names:
        (folder / f"{name}.gguf").symlink_to(tiny_models["tiny-xs"].path)
    router = _router(["--models-dir", str(folder), "--offline"], tmp_path / "router.log",
                     child_cmd=child_cmd)
    try:
        for name in names:
            r = router.chat(name)
            assert r.status_code == 200, (name, r.text, router.log())
            assert r.json()["model"] == name
        lines = [cmdline(pid) for pid in children_of(router.proc.pid)]
        for name in names:
            assert any(str(folder / f"{name}.gguf") in line for line in lines), (name, lines)
        for words in lines:  # no child was given a --host of the file's name
            assert "--host=0.0.0.0" not in words
            assert all(after == "127.0.0.1" for flag, after in itertools.pairwise(words)
                       if flag == "--host"), words
    finally:
        _stop(router)


@pytest.mark.live
def test_llama_api_key_alone_turns_authentication_on(tiny_models: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_API_KEY", "secret")
    router = _router(["--models-dir", str(tiny_models.root), "--offline"],
                     tmp_path / "router.log", headers={"Authorization": "Bearer secret"})
    try:
        assert router.client.get("/models").status_code == 401
        assert router.client.post("/v1/chat/completions", json={"model": "tiny-xs"}
                                  ).status_code == 401
        assert router.client.get("/health").status_code == 200
        assert router.client.get("/models", headers=router.headers).status_code == 200
    finally:
        _stop(router)


@pytest.fixture(scope="module")
def hub_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """A router whose downloads go to the local hub (up for the whole module)."""
    folder = tmp_path_factory.mktemp("hub-router")
    (folder / "models").mkdir()
    with LocalHub() as hub, pytest.MonkeyPatch.context() as mp:
        for key, value in hub.env().items():
            mp.setenv(key, value)
        mp.setenv("LLAMA_CACHE", str(folder / "cache"))
        router = _router(["--models-dir", str(folder / "models")], folder / "router.log")
        try:
            yield router
        finally:
            _stop(router)


@pytest.mark.live
@given(st.one_of(st.text(max_size=120),
                 st.from_regex(r"\A[a-zA-Z0-9_.-]{1,12}/[a-zA-Z0-9_.-]{1,12}(:[A-Za-z0-9_]{0,6})?"
                               r"[\n\x00 :/-]?\Z", fullmatch=True)))
@example("user/repo\n")
@example("user/a--b:F16")
@example("user/repo.git")
@example("-user/repo")
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_post_models_never_answers_5xx_to_a_malformed_name(hub_router: Router, name: str) -> None:
    """With the hub up, a name is downloaded (200) or refused (4xx), never a 5xx."""
    r = hub_router.client.post("/models", json={"model": name})
    assert r.status_code < 500, (name, r.status_code, r.text)
    if r.status_code == 200:  # a name the hub has: fine, but none of these should be one
        pytest.fail(f"downloading {name!r}?")
    try:
        split_name(name)
    except BadName:
        assert r.status_code == 400, (name, r.text)


# -- SSE: a subscriber that falls behind --------------------------------------------------------

def test_an_sse_subscriber_that_falls_behind_gets_a_last_event_and_its_stream_ends() -> None:
    """A child writing 1000 ``loading`` lines at once used to overflow a subscriber's buffer:
    it was dropped silently and its stream stayed open for ever. Now it reads what was buffered,
    then ``stream_overflow``, then the end of its stream, so it can reconnect."""
    import anyio

    from refimpl.core.commands import Publish
    from refimpl.core.config import RouterConfig
    from refimpl.core.router import RouterCore
    from refimpl.router import app as router_app
    from refimpl.router.driver import SSE_BUFFER, Driver

    driver = Driver(RouterCore(RouterConfig(models=())), spawner=None)  # type: ignore[arg-type]
    app = router_app.RouterApp(driver, options.RouterOptions()).app
    body = bytearray()

    async def main() -> None:
        async def receive() -> dict[str, Any]:
            await anyio.sleep_forever()
            raise AssertionError

        first = anyio.Event()
        go = anyio.Event()
        done = anyio.Event()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not first.is_set():
                    first.set()
                    await go.wait()  # fall behind: read nothing until every event is out
                if not message.get("more_body", False):
                    done.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/models/sse",
                 "raw_path": b"/models/sse", "query_string": b"", "root_path": "",
                 "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        async with anyio.create_task_group() as tg:
            await tg.start(driver.run)
            tg.start_soon(app, scope, receive, send)
            with anyio.fail_after(5):
                await first.wait()
            for i in range(4 * SSE_BUFFER):  # 1000 `loading` lines at once
                driver._execute(Publish("m", "loading", {"n": i}))  # as the core's commands
            go.set()
            with anyio.fail_after(5):  # before the fix: open for ever
                await done.wait()
            tg.cancel_scope.cancel()

    anyio.run(main)
    events = [json.loads(line[len("data: "):]) for line in body.decode().split("\n\n")
              if line.startswith("data: ")]
    assert [e["data"].get("n") for e in events[:-1]] == list(range(SSE_BUFFER))
    assert events[-1]["event"] == "stream_overflow" and "reconnect" in events[-1]["data"]["message"]
    assert not driver.overflowed  # forgotten once its stream ended


# -- each child its own key ---------------------------------------------------------------------

@pytest.mark.live
def test_a_child_answers_only_with_its_own_key(tiny_models: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A child's port is in its world-readable command line: before, anyone on the machine got
    answers from it without the router's key. Now each child gets a random key of its own in
    its environment (LLAMA_API_KEY, as llama-server reads it; never in argv) and the router
    proxies with it: the port answers 401 to anyone else."""
    import httpx
    import psutil  # type: ignore[import-untyped, unused-ignore]

    monkeypatch.setenv("LLAMA_API_KEY", "router-secret")
    router = Router(Target(None, None), ["--models-dir", str(tiny_models.root), "--offline"],
                    tmp_path / "router.log", headers={"Authorization": "Bearer router-secret"})
    try:
        keys = []
        for model in ("tiny-xs", "tiny-s"):
            r = router.chat(model)
            assert r.status_code == 200, r.text
        for pid in children_of(router.proc.pid):
            words = cmdline(pid)
            port = words[words.index("--port") + 1]
            key = psutil.Process(pid).environ()["LLAMA_API_KEY"]
            assert key != "router-secret" and len(key) >= 32
            assert not any(key in word for word in words)
            keys.append(key)
            url = f"http://127.0.0.1:{port}"
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            for credentials in ({}, {"Authorization": "Bearer router-secret"},
                                {"Authorization": f"Bearer {key}x"}):
                r = httpx.post(url + "/v1/chat/completions", json=chat, headers=credentials)
                assert r.status_code == 401, (credentials, r.text)
                assert r.json()["error"]["type"] == "authentication_error"
            assert httpx.get(url + "/props").status_code == 401
            assert httpx.get(url + "/health").status_code == 200  # as llama-server's
            r = httpx.post(url + "/v1/chat/completions", json=chat,
                           headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        assert len(keys) == 2 and len(set(keys)) == 2, keys
    finally:
        _stop(router)


# -- a child's output flood ---------------------------------------------------------------------

@pytest.mark.live
def test_a_child_flooding_its_output_neither_floods_the_log_nor_stops_the_router(
        tiny_models: Any, tmp_path: Path) -> None:
    """A child writing log lines as fast as it can, on stdout and stderr, used to slow /health
    to 3.2 s and write 216 MB of router log. Now what it may log is a token bucket per child
    (``refimpl/router/loglimit.py``): the rest is counted in a summary line, and the driver
    yields to the event loop after each chunk it reads. The router's latency meanwhile is a
    figure (``python bench/attack.py --attack flood``, a ratio to the same router at rest), not
    a bound here."""
    import time

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "flood-output.gguf").symlink_to(tiny_models["tiny-xs"].path)
    (folder / "tiny-xs.gguf").symlink_to(tiny_models["tiny-xs"].path)
    log = tmp_path / "router.log"
    router = _router(["--models-dir", str(folder), "--offline"], log,
                     child_cmd=FAKE + " --faults-from-name")
    try:
        assert router.chat("flood-output").status_code == 200
        start_size, t0 = log.stat().st_size, time.monotonic()
        for _ in range(100):
            assert router.client.get("/health").status_code == 200
        assert router.chat("tiny-xs").status_code == 200  # other models are served
        elapsed, grown = time.monotonic() - t0, log.stat().st_size - start_size
    finally:
        _stop(router)
    print(f"\nlog grew {grown} bytes in {elapsed:.2f} s of flood")
    # two buckets (stdout, stderr) of 256 KiB, refilled at 64 KiB/s each
    assert grown < 2 * (256 * 1024 + 64 * 1024 * (elapsed + 1)), (grown, elapsed)
    assert "of this child's output not logged" in log.read_text(errors="replace")


@pytest.mark.live
def test_an_over_long_stderr_line_is_logged_cut(tiny_models: Any, tmp_path: Path) -> None:
    """A 200 MB stderr line without a newline used to write 105 MB of log: now its first 8 KiB,
    and the rest up to its newline is dropped unread."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "long-stderr-line.gguf").symlink_to(tiny_models["tiny-xs"].path)
    log = tmp_path / "router.log"
    router = _router(["--models-dir", str(folder), "--offline"], log,
                     child_cmd=FAKE + " --faults-from-name")
    try:
        assert router.chat("long-stderr-line").status_code == 200
    finally:
        _stop(router)
    text = log.read_text(errors="replace")
    assert log.stat().st_size < 64 * 1024, log.stat().st_size
    assert "[cut: the rest of this line is not logged]" in text


# -- GGUF headers: bounded, off the event loop --------------------------------------------------

def test_gguf_metadata_skips_huge_arrays_unread(tmp_path: Path) -> None:
    """A 1M-entry array took the gguf package's reader 24 s; arrays are now skipped by their
    lengths alone (0.2 s here), and reading stops at META_SECONDS / META_BYTES whatever."""
    from refimpl.router.memory import gguf_metadata, kv_cache_bytes
    path = hostile_gguf(tmp_path / "hostile.gguf")
    meta = gguf_metadata(path)  # all of it: read within META_SECONDS (the time is a figure)
    assert meta == {"general.architecture": "llama", "llama.block_count": 2,
                    "llama.embedding_length": 64, "llama.context_length": 128,
                    "llama.attention.head_count": 4}
    assert kv_cache_bytes(path, None) == 2 * 2 * 128 * 64 * 2
    # bounded: with no time left, or a byte limit inside the array, what came before it
    assert gguf_metadata(path, seconds=0).keys() <= {"general.architecture"}
    assert gguf_metadata(path, limit=1024) == {"general.architecture": "llama"}
    # cut short anywhere: the keys before the cut, never an exception
    data = path.read_bytes()
    for end in (4, 8, 30, 60, len(data) // 2, len(data) - 3):
        (tmp_path / "cut.gguf").write_bytes(data[:end])
        try:
            assert set(gguf_metadata(tmp_path / "cut.gguf")) <= set(meta)
        except ValueError:
            assert end < 8  # no version: not a GGUF file
    with pytest.raises(ValueError):
        gguf_metadata(_write(tmp_path / "x.gguf", b"GGML" + data[4:]))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.live
def test_a_huge_gguf_header_neither_slows_start_up_nor_blocks_reload(tiny_models: Any,
                                                                     tmp_path: Path) -> None:
    """Such a file in --models-dir made start-up take 26 s and stopped the whole router for 12 s
    on every ``GET /models?reload=1``: headers are read bounded, and on a worker thread. What
    is checked here is the order of events: the router answers ``/health`` while a reload is
    reading (many answers inside the reloads' round trips). The times are figures
    (``python bench/attack.py --attack reload``, a ratio to the same router at rest)."""
    import threading
    import time

    folder = tmp_path / "models"
    folder.mkdir()
    hostile_gguf(folder / "hostile.gguf")
    (folder / "tiny-xs.gguf").symlink_to(tiny_models["tiny-xs"].path)
    router = _router(["--models-dir", str(folder), "--offline"], tmp_path / "router.log")
    try:
        reloads: list[tuple[float, float, int]] = []  # (sent, answered, status)

        def reload() -> None:
            for _ in range(5):
                sent = time.monotonic()
                status = router.client.get("/models?reload=1").status_code
                reloads.append((sent, time.monotonic(), status))

        thread = threading.Thread(target=reload)
        thread.start()
        answered = []  # when each /health answer came
        while thread.is_alive():
            assert router.client.get("/health").status_code == 200
            answered.append(time.monotonic())
        thread.join()
        assert [status for _, _, status in reloads] == [200] * 5
        inside = [sum(sent < t < done for t in answered) for sent, done, _ in reloads]
        print(f"\n/health answers inside each of 5 reloads: {inside}")
        # before: at most one per reload (the read blocked the event loop; only an answer already
        # on its way could land inside); now dozens each, with the reads on a worker thread
        assert sum(inside) >= 10, f"/health answers inside each reload: {inside}"
        assert router.chat("tiny-xs").status_code == 200
    finally:
        _stop(router)


def test_log_limit_is_a_token_bucket_with_a_summary() -> None:
    """The bucket alone, in made-up time: a burst gets through, the rest is counted, the rate
    refills it, and the summary reports (and resets) what was dropped."""
    from refimpl.router.loglimit import MAX_LOG_LINE, LogLimit, cut

    limit = LogLimit(burst=3, burst_bytes=1000, rate=1, byte_rate=100)
    assert [limit.take(10, 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert limit.summary() == ("2 line(s) (20 bytes) of this child's output not logged: over 1 "
                               "lines or 100 bytes a second")
    assert limit.summary() is None
    assert not limit.take(10, 0.5) and limit.take(10, 1.0)  # one line a second
    assert limit.take(900, 100.0) and not limit.take(200, 100.0)  # bytes bound too
    assert LogLimit(burst=10, burst_bytes=50).take(60, 0.0) is False
    assert cut("x" * (MAX_LOG_LINE + 5)).endswith(f"[cut: {MAX_LOG_LINE + 5} characters]")


def test_a_fifo_named_like_a_model_hangs_no_reader(tmp_path: Path) -> None:
    """A FIFO named ``*.gguf`` (in the folder, or in a model's sub-folder) used to block its
    reader until something wrote to it: at start-up, or the reload's worker thread for ever.
    It is not a model file: the sources skip it and the header reader refuses it at once."""
    from refimpl.router.memory import gguf_complete, gguf_metadata, kv_cache_bytes

    os.mkfifo(tmp_path / "pipe.gguf")
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "model.gguf")
    for fifo in (tmp_path / "pipe.gguf", tmp_path / "sub" / "model.gguf"):
        with pytest.raises(ValueError, match="not a regular file"):
            gguf_metadata(fifo)
        with pytest.raises(ValueError, match="not a regular file"):
            gguf_complete(fifo)
        assert kv_cache_bytes(fifo, None) == 0
    assert load_sources(str(tmp_path), None, [], None) == []
