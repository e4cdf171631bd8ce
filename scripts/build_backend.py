"""The build backend: setuptools, and for a wheel one distinctive top-level package.

In the checkout the harness's parts are top-level packages (``refimpl``, ``simulator``,
``properties``, ``fixtures``, ``conformance``): that is where its commands run from (``python -m
refimpl``, ``python -m simulator``) and what its tests, the bug zoo and mutmut import. Installed
next to other packages those names would collide (``fixtures`` is also a PyPI package), so a wheel
installs them as subpackages of ``llama_router_harness``: ``build_wheel`` copies them into a
staging tree under that name, rewrites what names them (imports; ``-m MODULE`` in command lines;
dotted module names in strings, such as pytest plugin names; pyproject's entry points), checks
that nothing names a part bare any more and that every file still compiles, and hands the staging
tree to setuptools. An editable install and the sdist are setuptools' own, on the checkout as it
is.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any, Iterator

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  the hooks not defined below

PACKAGE = "llama_router_harness"
PARTS = ("refimpl", "simulator", "properties", "fixtures", "conformance")
ROOT = Path(__file__).resolve().parent.parent
# What a wheel leaves out: the search's reproductions (standalone scripts, run from a checkout),
# the mutants' site folder (a checkout's sitecustomize) and build leftovers.
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "repros", "site")

_P = "|".join(PARTS)
_REWRITES = [
    # from refimpl.core import X / from fixtures import procs
    (re.compile(rf"^(\s*)from ({_P})(?=[.\s])", re.M), rf"\1from {PACKAGE}.\2"),
    # import refimpl.core.commands as commands
    (re.compile(rf"^(\s*)import ({_P})((?:\.\w+)+ as )", re.M), rf"\1import {PACKAGE}.\2\3"),
    # [sys.executable, "-m", "refimpl", ...] and "python -m fixtures.fake_child --x"
    (re.compile(rf"""(-m["'],\s*["']|-m )({_P})(?=[."'\s])"""), rf"\1{PACKAGE}.\2"),
    # "from simulator.whole import *\n...": code written out as text
    (re.compile(rf"""(["'])from ({_P})(?=\.)"""), rf"\1from {PACKAGE}.\2"),
    # "fixtures.leakcheck", "refimpl.child.zygote", mock targets: dotted names in strings
    (re.compile(rf"""(["'])({_P})(\.\w+)+(?=\1)"""), lambda m: m[1] + f"{PACKAGE}." + m[0][1:]),
]
_BARE = re.compile(rf"^\s*import ({_P})\b", re.M)  # `import refimpl` binds a name: not rewritten


class BuildError(Exception):
    """The staging tree cannot be made (a file names a part in a way not rewritten)."""


def rewrite(text: str) -> str:
    """``text`` with every name of a part under ``PACKAGE``."""
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)  # type: ignore[arg-type]
    return text


def _pyproject(text: str) -> str:
    """The checkout's pyproject.toml for the staging tree: one package, entry points under it."""
    def sub(old: str, new: str) -> None:
        nonlocal text
        if old not in text:
            raise BuildError(f"pyproject.toml: expected {old!r} (scripts/build_backend.py "
                             "rewrites it for the wheel); update one or the other")
        text = text.replace(old, new)

    sub('include = ["refimpl*", "simulator*", "properties*", "fixtures*", "conformance*"]',
        f'include = ["{PACKAGE}*"]')
    sub('exclude = ["conformance.repros*"]', "exclude = []")
    for part in PARTS:
        text = re.sub(rf'^{part} = \[', f'"{PACKAGE}.{part}" = [', text, flags=re.M)
    # entry points: "refimpl.__main__:run" (values) and "conformance.plugin" (the pytest11 name)
    text = re.sub(rf'"({_P})((?:\.\w+)*(?::\w+)?)"', rf'"{PACKAGE}.\1\2"', text)
    # the build of the staging tree is setuptools' own
    text = re.sub(r'^build-backend = "build_backend"\nbackend-path = \["scripts"\]\n',
                  'build-backend = "setuptools.build_meta"\n', text, flags=re.M)
    return text


def stage(into: Path) -> Path:
    """Write the wheel's source tree into ``into``; return it."""
    pkg = into / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        '"""llama-router-harness: the reference router for llama-server\'s router mode '
        '(``refimpl``, ``python -m llama_router_harness.refimpl``), its simulator, its '
        'guarantees (``properties``), test fixtures and the conformance suite '
        '(``llama-router-conformance``, or ``pytest --pyargs '
        'llama_router_harness.conformance``)."""\n')
    problems = []
    for part in PARTS:
        shutil.copytree(ROOT / part, pkg / part, ignore=SKIP)
        for path in (pkg / part).rglob("*.py"):
            text = rewrite(path.read_text(encoding="utf-8"))
            path.write_text(text, encoding="utf-8")
            problems += [f"{path.relative_to(pkg)}: `{m[0].strip()}` binds a bare name"
                         for m in _BARE.finditer(text)]
            try:
                compile(text, str(path), "exec")
            except SyntaxError as e:
                problems.append(f"{path.relative_to(pkg)}: {e}")
    if problems:
        raise BuildError("cannot stage the wheel:\n  " + "\n  ".join(problems))
    (into / "pyproject.toml").write_text(_pyproject((ROOT / "pyproject.toml").read_text()))
    shutil.copy(ROOT / "README.md", into / "README.md")
    return into


@contextmanager
def _staged() -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="llama-router-wheel-") as tmp, \
            chdir(stage(Path(tmp) / "src")):
        yield


def build_wheel(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    wheel_directory = os.path.abspath(wheel_directory)
    with _staged():
        return _setuptools.build_wheel(wheel_directory, config_settings, None)


def prepare_metadata_for_build_wheel(metadata_directory: str,
                                     config_settings: dict[str, Any] | None = None) -> str:
    metadata_directory = os.path.abspath(metadata_directory)
    with _staged():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)
