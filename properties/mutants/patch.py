"""Applying text edits to modules that are already imported, and taking them back.

A mutant is a list of :class:`Edit`: exact snippets of a production module's source and what
replaces each. :func:`patch` reads the module's file, checks that every old snippet occurs exactly
once (else the mutant is stale: :class:`StaleMutant` names the file and the snippet), compiles
the edited source and puts the new code of every function or method that changed onto the
*existing* function objects (``function.__code__``). Every reference sees the mutant, ``from x
import f`` and bound methods included, and nothing is executed at module level again. Closures
already created by a changed function keep their old code: apply mutants before the code under
test builds them (the process-tree path does it at interpreter start).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import inspect
import linecache
import sys
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FunctionType, ModuleType
from typing import Callable, Iterator, Sequence


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``module``'s source."""

    module: str
    old: str
    new: str


class StaleMutant(Exception):
    """A mutant no longer fits the source it edits, or edits what cannot be swapped."""


# module name -> the source its live functions run now (only while mutated)
_current: dict[str, str] = {}


def patch(label: str, edits: list[Edit]) -> Callable[[], None]:
    """Apply ``edits`` (grouped by module, in order) and return the callable that undoes them.

    Undo in the reverse order of applying when several patches are active at once."""
    modules: dict[str, list[Edit]] = {}
    for edit in edits:
        modules.setdefault(edit.module, []).append(edit)
    undos: list[Callable[[], None]] = []
    try:
        for name, module_edits in modules.items():
            undos.append(_patch_module(label, importlib.import_module(name), module_edits))
    except BaseException:
        for undo in reversed(undos):
            undo()
        raise

    def undo_all() -> None:
        for undo in reversed(undos):
            undo()

    return undo_all


def patch_on_import(label: str, edits: list[Edit]) -> None:
    """Like :func:`patch`, for good and without importing anything: a module already imported
    is patched now, any other right after its first import (the process-tree path uses this at
    interpreter start, before the program has imported anything)."""
    modules: dict[str, list[Edit]] = {}
    for edit in edits:
        modules.setdefault(edit.module, []).append(edit)
    for name, module_edits in modules.items():
        module = sys.modules.get(name)
        if module is not None:
            _patch_module(label, module, module_edits)
        else:
            _ON_IMPORT.pending[name] = (label, module_edits)
    keep_first()


def keep_first() -> None:
    """Put the on-import patcher first among the finders again, while modules wait for their
    edits: a finder inserted before it since (pytest's assertion rewriter, which the checkout's
    pytest11 plugin has rewrite the harness's own modules) would load them unedited."""
    if _ON_IMPORT in sys.meta_path:
        sys.meta_path.remove(_ON_IMPORT)
    if _ON_IMPORT.pending:
        sys.meta_path.insert(0, _ON_IMPORT)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds a pending module with the other finders, and patches it once it has executed."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[str, list[Edit]]] = {}

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        assert loader is not None and hasattr(loader, "exec_module")
        label, edits = self.pending.pop(fullname)
        # A loader of this module alone: the one found may load others too (pytest's assertion
        # rewriter loads every module it rewrites), and they must not get this module's edits.
        spec.loader = _PatchingLoader(loader, label, edits)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    """``loader``, then the mutant's edits applied to the module it executed."""

    def __init__(self, loader: importlib.abc.Loader, label: str, edits: list[Edit]) -> None:
        self.loader, self.label, self.edits = loader, label, edits

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _patch_module(self.label, module, self.edits)

    def __getattr__(self, name: str) -> object:  # get_source, get_filename, ...
        return getattr(self.loader, name)


_ON_IMPORT = _PatchOnImport()


def edited_source(label: str, path: Path, source: str, edits: list[Edit]) -> str:
    """``source`` with ``edits`` applied; :class:`StaleMutant` if an old snippet is not there
    exactly once."""
    for edit in edits:
        count = source.count(edit.old)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            raise StaleMutant(f"mutant {label} is stale: {path}: snippet {where}:\n{edit.old}")
        source = source.replace(edit.old, edit.new)
    return source


def _patch_module(label: str, module: ModuleType, edits: list[Edit]) -> Callable[[], None]:
    path = Path(inspect.getfile(module))
    before = _current.get(module.__name__)
    source = before if before is not None else path.read_text(encoding="utf-8")
    after = edited_source(label, path, source, edits)
    # The edited source gets a file name of its own, so tracebacks show the mutant's lines.
    fake = f"{path} (mutant {label})"
    old_code = compile(source, str(path), "exec", dont_inherit=True)
    new_code = compile(after, fake, "exec", dont_inherit=True)
    changed = dict(_changed_functions(old_code, new_code, path, label))
    live = _live_functions(module)
    swaps: list[tuple[FunctionType, CodeType, CodeType]] = []
    for qualname, (old, new) in changed.items():
        functions = live.get(qualname, [])
        if not functions:
            raise StaleMutant(f"mutant {label}: {path}: no function object for {qualname!r} "
                              f"(edit a function or method, not module-level code)")
        for function in functions:
            if not _same(function.__code__, old):
                raise StaleMutant(f"mutant {label}: {path}: {qualname} is not the code on "
                                  f"disk (the file changed since it was imported?)")
            if len(function.__code__.co_freevars) != len(new.co_freevars):
                raise StaleMutant(f"mutant {label}: {path}: {qualname}: an edit may not "
                                  f"change which outer variables a function uses")
            swaps.append((function, function.__code__, new))
    for function, _, new in swaps:
        function.__code__ = new
    linecache.cache[fake] = (len(after), None, after.splitlines(True), fake)
    _current[module.__name__] = after

    def undo() -> None:
        for function, old, _ in reversed(swaps):
            function.__code__ = old
        linecache.cache.pop(fake, None)
        if before is None:
            _current.pop(module.__name__, None)
        else:
            _current[module.__name__] = before

    return undo


def _changed_functions(old: CodeType, new: CodeType, path: Path, label: str
                       ) -> Iterator[tuple[str, tuple[CodeType, CodeType]]]:
    """The (qualname, (old code, new code)) of each outermost function whose code changed."""
    if not _same_shallow(old, new):
        if old.co_flags & inspect.CO_OPTIMIZED and old.co_qualname == new.co_qualname:
            yield old.co_qualname, (old, new)
            return
        what = "module-level code" if old.co_name == "<module>" else f"the body of {old.co_qualname}"
        raise StaleMutant(f"mutant {label}: {path}: the edit changes {what}; edit a function "
                          f"or method instead")
    for a, b in zip(_nested(old), _nested(new)):
        yield from _changed_functions(a, b, path, label)


def _nested(code: CodeType) -> list[CodeType]:
    return [c for c in code.co_consts if isinstance(c, CodeType)]


def _same_shallow(a: CodeType, b: CodeType) -> bool:
    """Same bytecode and names, nested code compared by name only, line numbers ignored."""
    return (a.co_code == b.co_code and a.co_names == b.co_names
            and a.co_varnames == b.co_varnames and a.co_freevars == b.co_freevars
            and a.co_cellvars == b.co_cellvars and a.co_flags == b.co_flags
            and a.co_argcount == b.co_argcount and a.co_kwonlyargcount == b.co_kwonlyargcount
            and a.co_posonlyargcount == b.co_posonlyargcount
            and [_const_key(c) for c in a.co_consts] == [_const_key(c) for c in b.co_consts])


def _const_key(value: object) -> object:
    if isinstance(value, CodeType):
        return ("<code>", value.co_qualname)
    return (type(value), value)


def _same(a: CodeType, b: CodeType) -> bool:
    """Same code throughout, nested functions included (line numbers ignored)."""
    return _same_shallow(a, b) and all(_same(x, y) for x, y in zip(_nested(a), _nested(b)))


def _live_functions(module: ModuleType) -> dict[str, list[FunctionType]]:
    """Every function and method defined in ``module``, by qualified name."""
    found: dict[str, list[FunctionType]] = {}
    seen: set[int] = set()

    def add(value: object) -> None:
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            for part in (value.fget, value.fset, value.fdel):
                add(part)
            return
        wrapped = getattr(value, "__wrapped__", None)  # functools.wraps: the function inside
        if isinstance(value, FunctionType) and wrapped is not None:
            add(wrapped)
        if isinstance(value, FunctionType) and value.__module__ == module.__name__ \
                and id(value) not in seen:
            seen.add(id(value))
            found.setdefault(value.__code__.co_qualname, []).append(value)
        elif isinstance(value, type) and value.__module__ == module.__name__ \
                and id(value) not in seen:
            seen.add(id(value))
            for member in vars(value).values():
                add(member)

    for value in list(vars(module).values()):
        add(value)
    return found


def applied_source(module: str) -> str | None:
    """The mutated source ``module`` runs now, or None when it runs its file unchanged."""
    return _current.get(module)

