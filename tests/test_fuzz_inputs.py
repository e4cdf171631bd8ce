"""Hypothesis over what the router reads at start-up and on reload (issue 12): presets, models-dir
folders, GGUF headers.

The sentence checked: **whatever the files say, the router starts (or reloads) with them or
refuses them with one clear line (``SourceError``: start-up exits 2, reload answers 400 and keeps
the previous catalog); never a traceback, never a 5xx, never a hang.** In process first (many
cases: ``load_sources`` and ``main.build``, which builds the core from what was read, and
``gguf_metadata`` on mangled headers), then on a live router: ``GET /models?reload=1`` after each
drawn preset, and a few start-ups of the real process.

Case counts (``ci`` profile): presets 300, models-dir folders 100, GGUF headers 300, live reloads
100, live start-ups 6.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conformance.routers import ROOT, Router, Target
from refimpl.router import main as router_main
from refimpl.router import options
from refimpl.router.memory import gguf_metadata
from refimpl.router.sources import SourceError, load_sources

FAKE = "{python} -m fixtures.fake_child"
SCALE = settings().max_examples / 100  # the profile in force; ci: 1.0


def cases(n: int) -> int:
    return max(5, int(n * SCALE))


# -- presets ------------------------------------------------------------------------------------

KEYS = ["model", "m", "alias", "aliases", "mmproj", "load-on-startup", "stop-timeout", "c",
        "ctx-size", "temp", "seed", "n-gpu-layers", "LLAMA_ARG_CTX_SIZE", "jinja", "top-k",
        "dedup-cache-models", "host", "port", "api-key", "-c", "--temp"]
VALUES = st.one_of(
    st.sampled_from(["MODEL", "MODEL", "1", "0", "-1", "nan", "inf", "-inf", "1e999", "1.5",
                     "true", "false", "on", "off", "", "a, b", "tiny", "x,,y", "  ", "0x10",
                     "9" * 30, "../MODEL", "/nonexistent.gguf", "%(x)s", "$port"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"),
            max_size=20))
SECTION_NAMES = st.one_of(st.sampled_from(["*", "a", "b", "tiny", "tiny-xs", "A", "a b", "-v",
                                           "x$port", "user/repo:Q8_0", "DEFAULT"]),
                          st.text(alphabet=st.characters(blacklist_categories=["Cs"],
                                                         blacklist_characters="[]\n\r"),
                                  min_size=1, max_size=12))


@st.composite
def presets(draw: st.DrawFn) -> str:
    sections = draw(st.lists(st.tuples(SECTION_NAMES, st.lists(
        st.tuples(st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=8)), VALUES),
        max_size=5)), max_size=4))
    lines = []
    for name, items in sections:
        lines.append(f"[{name}]")
        lines += [f"{key} = {value}" for key, value in items]
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 9)) == 0:  # now and then plain garbage
        text = draw(st.text(max_size=80))
    return text


@pytest.fixture(scope="module")
def model_file(tiny_models: Any) -> Path:
    return Path(tiny_models["tiny-xs"].path)


def _write_preset(folder: Path, text: str, model: Path) -> Path:
    path = folder / "models.ini"
    path.write_text(text.replace("MODEL", str(model)), encoding="utf-8",
                    errors="surrogateescape")
    return path


def _build(argv: list[str]) -> None:
    """What start-up does before serving: parse, read the sources, build the core and app."""
    opts = options.parse(argv, env={})
    router_main.build(opts)


@settings(max_examples=cases(300), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=presets())
@example(text="[a]\nmodel = MODEL\nalias = shared\n[b]\nmodel = MODEL\nalias = shared\n")
@example(text="[a]\nmodel = MODEL\nstop-timeout = -1\n")
@example(text="[*]\nc = nan\n[a]\nmodel = MODEL\n")
@example(text="[a]\nmodel = MODEL\nalias = tiny-xs\n")
@example(text="[a]\n[a]\n")
def test_any_preset_starts_or_is_one_clear_error(model_file: Path, text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        preset = _write_preset(Path(tmp), text, model_file)
        try:
            _build(["--models-preset", str(preset), "--models-memory-margin", "0"])
        except SourceError as exc:
            message = str(exc)
            assert "\n" not in message and str(preset) in message, message


# -- models-dir folders -------------------------------------------------------------------------

FILE_NAMES = st.one_of(
    st.sampled_from(["a.gguf", "mmproj-a.gguf", "-v.gguf", "--host=0.0.0.0.gguf", "x$port.gguf",
                     "m-00001-of-00002.gguf", "m-00002-of-00002.gguf", "m-00001-of-00003.gguf",
                     "a\nb.gguf", ".gguf", "a.GGUF", "a.gguf.part", "a b.gguf", "é.gguf"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00"),
            min_size=1, max_size=16).map(lambda t: t + ".gguf"))


@st.composite
def folders(draw: st.DrawFn) -> list[tuple[str, str]]:
    """(sub-folder or "", file name) pairs."""
    subs = st.one_of(st.just(""), st.sampled_from(["vision", "sharded", "empty", "-x"]))
    return draw(st.lists(st.tuples(subs, FILE_NAMES), max_size=8))


@settings(max_examples=cases(100), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=folders(), preset=st.one_of(st.none(), presets()))
def test_any_models_dir_starts_or_is_one_clear_error(model_file: Path,
                                                     layout: list[tuple[str, str]],
                                                     preset: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        folder.mkdir()
        for sub, name in layout:
            (folder / sub).mkdir(exist_ok=True)
            target = folder / sub / name
            if name in (".", "..") or target.exists():
                continue
            try:
                target.symlink_to(model_file)
            except OSError:
                continue  # a name this file system refuses (too long): not the router's input
        argv = ["--models-dir", str(folder), "--models-memory-margin", "0"]
        if preset is not None:
            argv += ["--models-preset", str(_write_preset(Path(tmp), preset, model_file))]
        try:
            _build(argv)
        except SourceError as exc:
            assert "\n" not in str(exc), str(exc)


# -- GGUF headers -------------------------------------------------------------------------------

def _header(arch: bytes, n: int) -> bytes:
    def string(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b
    items = [string(b"general.architecture") + struct.pack("<I", 8) + string(arch),
             string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, n)
             + b"".join(string(b"t") for _ in range(n)),
             string(b"llama.block_count") + struct.pack("<II", 4, 2)]
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(items)) + b"".join(items)


@st.composite
def mangled_headers(draw: st.DrawFn) -> bytes:
    data = bytearray(_header(draw(st.binary(max_size=8)), draw(st.integers(0, 50))))
    for _ in range(draw(st.integers(0, 6))):  # overwrite, cut, or grow
        action = draw(st.sampled_from(["set", "cut", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(max_size=16))
    return bytes(data)


@settings(max_examples=cases(300), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(mangled_headers(), st.binary(max_size=200)))
@example(data=b"GGUF" + struct.pack("<IQQ", 3, 0, 2**63))  # claims 2^63 keys
@example(data=b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62))  # a huge key
@example(data=b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k"
         + struct.pack("<IIQ", 9, 9, 2**60))  # an array of 2^60 arrays
def test_any_gguf_header_reads_bounded_or_is_refused(tmp_path: Path, data: bytes) -> None:
    """A dict of what could be read, or ValueError for a file that is not GGUF; bounded."""
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    try:
        meta = gguf_metadata(path, seconds=1.0)
    except ValueError:
        return
    assert isinstance(meta, dict)
    assert all(isinstance(k, str) for k in meta)


# -- live: reload and start-up ------------------------------------------------------------------

@pytest.fixture(scope="module")
def reloading(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Router, Path]]:
    folder = tmp_path_factory.mktemp("fuzz-reload")
    good = f"[good]\nmodel = {tiny_models['tiny-xs'].path}\n"
    (folder / "models.ini").write_text(good)
    r = Router(Target(None, FAKE), ["--models-preset", str(folder / "models.ini"), "--offline"],
               folder / "router.log")
    try:
        assert r.chat("good").status_code == 200
        yield r, folder / "models.ini"
        (folder / "models.ini").write_text(good)
        assert r.client.get("/models?reload=1").status_code == 200
        assert r.chat("good").status_code == 200
        assert "Traceback" not in Path(r.log_path).read_text(errors="replace")
    finally:
        leftovers = r.stop()
    assert not leftovers, f"children outlived the router: {leftovers}"


@pytest.mark.live
@settings(max_examples=cases(100), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=presets())
@example(text="[a]\nmodel = MODEL\nalias = shared\n[b]\nmodel = MODEL\nalias = shared\n")
def test_any_preset_reloads_or_is_a_400_and_the_catalog_stays(
        reloading: tuple[Router, Path], model_file: Path, text: str) -> None:
    router, preset = reloading
    before = router.client.get("/models").json()["data"]
    _write_preset(preset.parent, text, model_file)
    r = router.client.get("/models?reload=1")
    assert r.status_code in (200, 400), r.text[:300]
    if r.status_code == 400:
        error = r.json()["error"]
        assert error["code"] == 400 and "\n" not in error["message"], error
        after = router.client.get("/models").json()["data"]
        assert [m["id"] for m in after] == [m["id"] for m in before]


START_UPS = [
    "[a]\nmodel = MODEL\nalias = shared\n[b]\nmodel = MODEL\nalias = shared\n",
    "[a]\nmodel = MODEL\nstop-timeout = nan\n",
    "[*]\nc = 1e999\n[a]\nmodel = MODEL\n",
    "[a]\nno model here\n",
    "\x00\xff garbage",
    "[a]\nmodel = MODEL\nalias = x, y\n[x y]\nmodel = MODEL\n",
]


@pytest.mark.live
@pytest.mark.parametrize("text", START_UPS)
def test_start_up_with_a_bad_or_odd_preset_exits_2_in_one_line_or_serves(
        model_file: Path, tmp_path: Path, text: str) -> None:
    preset = _write_preset(tmp_path, text, model_file)
    env = dict(os.environ, LLAMA_CACHE=str(tmp_path / "no-cache"))
    env.pop("LLAMA_API_KEY", None)
    from refimpl.router.processes import free_port
    from fixtures.procs import popen, wait_healthy
    port = free_port()
    proc = popen([sys.executable, "-m", "refimpl", "--port", str(port), "--offline",
                  "--child-cmd", FAKE, "--models-preset", str(preset)], cwd=ROOT, env=env,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        why = wait_healthy(f"http://127.0.0.1:{port}", proc, seconds=60)
        if why is None:  # it took the preset: fine, as long as it serves
            return
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 2, (why, err.decode(errors="replace")[-2000:])
        lines = err.decode(errors="replace").strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
