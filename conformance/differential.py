"""``python -m conformance.differential``: one scripted scenario, two routers, the differences.

A scenario is a list of timed steps (requests, loads, unloads, kills, held requests) run against a
fresh router of each side in turn, on the tiny models. What each side did is reduced to two
things that do not depend on its speed:

* per model, the sequence of statuses ``/models/sse`` published, normalized: repeats (load
  progress) dropped, and an ``unloaded`` that ended in failure written ``unloaded (failed)``
  (the ``failed`` flag, or else a non-zero ``exit_code``, as ``GET /models`` derives it);
* per step, its outcome: ``ok``, ``cut`` (a stream without its end), the 4xx status, ``5xx``, or
  ``no answer`` (a connection error).

Differences are printed side by side, aligned; the exit status is 1 when there is one.

A scenario file is JSON::

    {"name": "swap", "router_args": ["--models-max", "1"], "settle": 1.0,
     "steps": [{"at": 0.0, "do": "request", "model": "tiny-xs", "sync": true},
               {"at": 0.1, "do": "request", "model": "tiny-s", "stream": true},
               {"do": "wait", "model": "tiny-s", "status": "loaded"},
               {"do": "unload", "model": "tiny-s"}]}

``do`` is one of ``request`` (``max_tokens``, ``stream``), ``load``, ``unload``, ``kill`` (SIGKILL
the model's child), ``freeze`` (SIGSTOP it: a child that hangs and ignores the exit command),
``hold`` (a request kept in flight at the stopped child, see ``conformance.routers.HeldRequest``),
``release`` (of the model's held request), ``wait`` (until the model's ``status``, by polling
``GET /models``) and ``sleep`` (``seconds``). A step starts at ``at`` seconds from the start, and
never before the previous synchronous step ended; ``request`` runs in the background unless
``"sync": true`` (every other step is synchronous).

Sides: ``refimpl`` (the reference router and its children), ``llama-server`` (``--router-bin``,
``LLAMA_SERVER_BIN_PATH`` or ``scripts/build-llama-server``'s cached build), ``interop`` (the
reference router with llama-server children), ``fake`` (the reference router with
``fixtures.fake_child`` children: quick, for testing this tool); a ``+Z18`` suffix runs the
reference router with that bug-zoo mutant applied (``refimpl+Z18``; ``properties/mutants``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx

from bench.report import write_section
from fixtures.tiny_models import ModelsDir, build_models_dir, default_cache_dir
from properties.mutants import UnknownMutant, variables
from properties.observed import unload_failed

from .routers import ROOT, HeldRequest, Router, Target

ACTIONS = ("request", "load", "unload", "kill", "freeze", "hold", "release", "wait", "sleep")


@dataclass(frozen=True, slots=True)
class Step:
    do: str
    model: str | None = None
    at: float = 0.0
    sync: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Step:
        raw = dict(raw)
        do = raw.pop("do")
        if do not in ACTIONS:
            raise ValueError(f"unknown step {do!r}; one of {', '.join(ACTIONS)}")
        model = raw.pop("model", None)
        if model is None and do != "sleep":
            raise ValueError(f"step {do!r} needs a model")
        return cls(do, model, float(raw.pop("at", 0.0)), bool(raw.pop("sync", do != "request")),
                   tuple(sorted(raw.items())))

    def option(self, name: str, default: Any) -> Any:
        return dict(self.options).get(name, default)

    def label(self, index: int) -> str:
        return f"{index + 1:>2} {self.do} {self.model or self.option('seconds', '')}".rstrip()


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    router_args: tuple[str, ...] = ()
    settle: float = 1.0  # seconds after the last step, for late status changes
    about: str = ""
    env: tuple[tuple[str, str], ...] = ()  # the router's environment, added on both sides

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Scenario:
        return cls(raw["name"], tuple(Step.parse(s) for s in raw["steps"]),
                   tuple(raw.get("router_args", ())), float(raw.get("settle", 1.0)),
                   raw.get("about", ""), tuple(sorted(raw.get("env", {}).items())))


def _s(do: str, model: str | None = None, **options: Any) -> dict[str, Any]:
    return {"do": do, "model": model, **options}


# Built in: each replays a clause or a known difference; `--list` prints them.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in map(Scenario.parse, [
    {"name": "swap", "router_args": ["--models-max", "1"],
     "about": "one slot: A, then B evicts A, then A again; an unload; a load through the API",
     "steps": [_s("request", "tiny-xs", sync=True), _s("request", "tiny-s", sync=True),
               _s("request", "tiny-xs", sync=True), _s("unload", "tiny-xs"),
               _s("wait", "tiny-xs", status="unloaded"), _s("load", "tiny-s"),
               _s("wait", "tiny-s", status="loaded"), _s("load", "tiny-s"),
               _s("unload", "tiny-xs")]},
    {"name": "busy", "router_args": ["--models-max", "1"],
     "about": "a held request keeps its model; a request for another model waits for it",
     "steps": [_s("request", "tiny-m", sync=True), _s("hold", "tiny-m"),
               _s("request", "tiny-s"), _s("sleep", seconds=1.0),
               _s("release", "tiny-m"), _s("wait", "tiny-s", status="loaded")]},
    {"name": "unload-busy", "about": "POST /models/unload of a model with a request in flight",
     "steps": [_s("request", "tiny-xs", sync=True), _s("hold", "tiny-xs"),
               _s("unload", "tiny-xs"), _s("sleep", seconds=0.5), _s("release", "tiny-xs"),
               _s("wait", "tiny-xs", status="unloaded"), _s("request", "tiny-xs", sync=True)]},
    {"name": "crash", "about": "a child killed with a request in flight, then asked again",
     "steps": [_s("request", "tiny-xs", sync=True), _s("hold", "tiny-xs"),
               _s("kill", "tiny-xs"), _s("release", "tiny-xs"),
               _s("wait", "tiny-xs", status="unloaded"),
               _s("request", "tiny-xs", sync=True)]},
    {"name": "corrupt", "about": "a model whose child exits while loading; the others serve",
     "steps": [_s("request", "corrupt", sync=True), _s("wait", "corrupt", status="unloaded"),
               _s("request", "tiny-xs", sync=True)]},
    {"name": "sleep", "router_args": ["--sleep-idle-seconds", "1"],
     "about": "a model falls asleep when idle and a request wakes it",
     "steps": [_s("request", "tiny-xs", sync=True), _s("wait", "tiny-xs", status="sleeping"),
               _s("request", "tiny-xs", sync=True), _s("wait", "tiny-xs", status="loaded")]},
    {"name": "fake-timing", "router_args": ["--models-max", "1"],
     "env": {"LLAMA_SERVER_DEBUG_FAKE_TIMING": "1"}, "settle": 3.0,
     "about": "llama-server's own race-widening hook (2 s in each load and after a request "
              "takes its model): cold requests for two models at once, one slot, then the "
              "first model again",
     "steps": [_s("request", "tiny-xs"), _s("request", "tiny-s", at=0.2),
               _s("request", "tiny-xs", at=0.4), _s("wait", "tiny-xs", status="loaded"),
               _s("sleep", seconds=1.0), _s("request", "tiny-s", at=0.0, sync=True)]},
    {"name": "errors", "router_args": ["--no-models-autoload"],
     "about": "answers without a load: autoload off, unknown model, unload of a model not running",
     "steps": [_s("request", "tiny-xs", sync=True), _s("request", "no-such-model", sync=True),
               _s("unload", "tiny-xs"), _s("load", "no-such-model"), _s("load", "tiny-xs"),
               _s("wait", "tiny-xs", status="loaded"), _s("request", "tiny-xs", sync=True)]},
])}


@dataclass
class Run:
    """What one side did in one scenario."""

    side: str
    transitions: dict[str, list[str]] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)  # step label -> outcome
    error: str = ""


def normalize_transitions(items: Sequence[tuple[float, dict[str, Any]]]) -> dict[str, list[str]]:
    """Per model, the statuses published, repeats dropped, failures marked."""
    out: dict[str, list[str]] = {}
    for _, message in items:
        data = message.get("data") or {}
        status = data.get("status")
        if status is None or message.get("model") in (None, "*"):
            continue
        if status == "unloaded" and unload_failed(data):
            status = "unloaded (failed)"
        seq = out.setdefault(message["model"], [])
        if not seq or seq[-1] != status:
            seq.append(status)
    return out


def outcome(status: int, text: str, stream: bool = False) -> str:
    if status == 599:
        return "no answer"
    if status >= 500:
        return "5xx"
    if status >= 400:
        return str(status)
    return "cut" if stream and "[DONE]" not in text else "ok"


def side_target(side: str, router_bin: str | None) -> Target:
    name, *mutants = side.split("+")
    try:  # every Python process of the router's tree applies them (properties/mutants)
        env = tuple(variables(mutants).items()) if mutants else ()
    except UnknownMutant as exc:
        raise SystemExit(str(exc)) from None
    if name == "refimpl":
        return Target(None, None, env)
    if name == "fake":
        return Target(None, f"{sys.executable} -m fixtures.fake_child", env)
    if name in ("llama-server", "interop"):
        binary = router_bin or _built_llama_server()
        if name == "interop":
            return Target(None, f"{binary} -m $model --port $port --host $host", env)
        if mutants:
            raise SystemExit("mutants (+ZN) apply to the reference router only")
        return Target(binary)
    raise SystemExit(f"unknown side {side!r}: refimpl, llama-server, interop or fake, "
                     "each with +ZN mutants for the reference router")


def _built_llama_server() -> str:
    found = os.environ.get("LLAMA_SERVER_BIN_PATH")
    if found:
        return found
    script = ROOT / "scripts" / "build-llama-server"
    run = subprocess.run([str(script)], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"scripts/build-llama-server failed:\n{run.stderr[-2000:]}")
    return run.stdout.strip().splitlines()[-1]


def run_scenario(scenario: Scenario, side: str, target: Target, models: ModelsDir,
                 log_dir: Path) -> Run:
    run = Run(side)
    args = ["--models-dir", str(models.root), *scenario.router_args]
    if scenario.env:
        target = dataclasses.replace(target, env=(*target.env, *scenario.env))
    try:
        router = Router(target, args, log_dir / f"{scenario.name}-{side}.log")
    except AssertionError as exc:
        run.error = f"router did not start: {str(exc).splitlines()[0]}"
        return run
    held: dict[str, HeldRequest] = {}
    background: list[threading.Thread] = []
    lock = threading.Lock()

    def record(label: str, value: str) -> None:
        with lock:
            run.outcomes[label] = value

    try:
        start = time.monotonic()
        for index, step in enumerate(scenario.steps):
            delay = start + step.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            label = step.label(index)
            action = _action(router, step, models, held, label, record)
            if step.sync:
                action()
            else:
                thread = threading.Thread(target=action, daemon=True)
                thread.start()
                background.append(thread)
        for thread in background:
            thread.join(120)
        time.sleep(scenario.settle)
    except AssertionError as exc:
        run.error = str(exc).splitlines()[0]
    finally:
        router.stop()
    run.transitions = normalize_transitions(router.events.items)
    return run


def _action(router: Router, step: Step, models: ModelsDir, held: dict[str, HeldRequest],
            label: str, record: Callable[[str, str], None]) -> Callable[[], None]:
    model = step.model or ""

    def request() -> None:
        stream = bool(step.option("stream", False))
        status, text = router.tracked(model, max_tokens=int(step.option("max_tokens", 4)),
                                      stream=stream)
        record(label, outcome(status, text, stream))

    def api(path: str) -> Callable[[], None]:
        def call() -> None:
            try:
                r = router.client.post(path, json={"model": model}, headers=router.headers)
                record(label, outcome(r.status_code, r.text))
            except httpx.HTTPError:
                record(label, "no answer")
        return call

    def kill() -> None:
        router.note("crash", model=model)
        os.kill(router.child(models[model].path).pid, signal.SIGKILL)
        record(label, "killed")

    def freeze() -> None:
        os.kill(router.child(models[model].path).pid, signal.SIGSTOP)
        record(label, "frozen")

    def hold() -> None:
        held[model] = router.hold(model, models[model].path)
        record(label, "held")

    def release() -> None:
        status, text = held.pop(model).release()
        record(label, outcome(status, text, stream=True))

    def wait() -> None:
        try:
            router.wait_status(model, step.option("status", "loaded"),
                               timeout=float(step.option("timeout", 30.0)))
            record(label, "reached")
        except AssertionError:
            record(label, "timed out")

    def sleep() -> None:
        time.sleep(float(step.option("seconds", 1.0)))

    return {"request": request, "load": api("/models/load"), "unload": api("/models/unload"),
            "kill": kill, "freeze": freeze, "hold": hold, "release": release, "wait": wait,
            "sleep": sleep}[step.do]


# -- the side-by-side comparison ------------------------------------------------------------------


def side_by_side(left: Sequence[str], right: Sequence[str], width: int) -> tuple[list[str], bool]:
    """Two sequences aligned (difflib), one row each: ``  a | a`` when equal, ``! a | b``
    when they differ, with an empty cell where one side has nothing."""
    rows: list[str] = []
    same = True
    matcher = difflib.SequenceMatcher(a=list(left), b=list(right), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        a, b = list(left[i1:i2]), list(right[j1:j2])
        for k in range(max(len(a), len(b))):
            x = a[k] if k < len(a) else ""
            y = b[k] if k < len(b) else ""
            mark = " " if tag == "equal" else "!"
            same = same and tag == "equal"
            rows.append(f"  {mark} {x:<{width}} | {y}")
    return rows, same


def compare(scenario: Scenario, left: Run, right: Run) -> tuple[str, bool]:
    """The report of one scenario, and whether both sides did the same."""
    width = 30
    lines = [f"== {scenario.name}: {scenario.about}",
             f"   router args: {' '.join(scenario.router_args) or '(none)'}"
             + "".join(f"; {k}={v}" for k, v in scenario.env),
             f"    {left.side:<{width}} | {right.side}"]
    same = True
    if left.error or right.error:
        lines.append(f"  ! {left.error or 'ran':<{width}} | {right.error or 'ran'}")
        same = left.error == right.error
    for model in sorted(set(left.transitions) | set(right.transitions)):
        rows, equal = side_by_side(["unloaded", *left.transitions.get(model, [])],
                                   ["unloaded", *right.transitions.get(model, [])], width)
        lines.append(f"  {model}: statuses{'' if equal else '  <-- differ'}")
        lines += rows
        same = same and equal
    lines.append("  steps:")
    labels = [step.label(i) for i, step in enumerate(scenario.steps)]
    for label in labels:
        a, b = left.outcomes.get(label, "-"), right.outcomes.get(label, "-")
        mark = " " if a == b else "!"
        same = same and a == b
        lines.append(f"  {mark} {label + ': ' + a:<{width}} | {b}")
    lines.append(f"   {'same' if same else 'DIFFERENT'}")
    return "\n".join(lines), same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.differential", description=(
            "Run scripted scenarios against two routers and print, side by side, per model "
            "the normalized status transitions and per step the outcome. Exit status 1 when "
            "the two sides differ."),
        epilog="A scenario file" + (__doc__ or "").split("A scenario file", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="NAME",
                        help=f"built-in scenarios to run (default: all: {', '.join(SCENARIOS)})")
    parser.add_argument("--file", type=Path, action="append", default=[],
                        help="a scenario as JSON (repeatable)")
    parser.add_argument("--left", default="refimpl", help="side A (default: %(default)s)")
    parser.add_argument("--right", default="llama-server", help="side B (default: %(default)s)")
    parser.add_argument("--router-bin", default=None,
                        help="the llama-server binary for the llama-server and interop sides")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the routers' logs in this folder (default: a temp folder)")
    parser.add_argument("--list", action="store_true", help="list the built-in scenarios")
    parser.add_argument("--doc", type=Path, default=None, help=(
        "also write the comparison into this markdown file, between its lines "
        f"{DOC_BEGIN} and {DOC_END} (docs/CONFORMANCE.md has them)"))
    args = parser.parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<10} {s.about}")
        return 0
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; see --list")
    chosen = [SCENARIOS[n] for n in args.scenarios]
    chosen += [Scenario.parse(json.loads(f.read_text())) for f in args.file]
    if not chosen:
        chosen = list(SCENARIOS.values())
    left = side_target(args.left, args.router_bin)
    right = side_target(args.right, args.router_bin)
    models = build_models_dir(default_cache_dir())
    differ = 0
    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="differential-") as tmp:
        log_dir = args.logs or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        for scenario in chosen:
            a = run_scenario(scenario, args.left, left, models, log_dir)
            b = run_scenario(scenario, args.right, right, models, log_dir)
            text, same = compare(scenario, a, b)
            print(text + "\n", flush=True)
            report.append(text)
            differ += not same
    summary = (f"{len(chosen) - differ} of {len(chosen)} scenarios the same on {args.left} and "
               f"{args.right}")
    print(summary)
    if args.doc is not None:
        write_doc(args.doc, f"{args.left} | {args.right}", "\n\n".join(report) + "\n\n" + summary)
    return 1 if differ else 0


DOC_BEGIN = "<!-- BEGIN DIFFERENTIAL {sides} -->"
DOC_END = "<!-- END DIFFERENTIAL {sides} -->"


def write_doc(doc: Path, sides: str, text: str) -> None:
    """Put ``text`` in a code block between the two marker lines for ``sides`` (added at the
    end of the file the first time)."""
    command = f"$ python -m conformance.differential --left {sides.replace(' | ', ' --right ')}"
    write_section(DOC_BEGIN.format(sides=sides), f"```text\n{command}\n{text}\n```", doc,
                  DOC_END.format(sides=sides))


if __name__ == "__main__":
    raise SystemExit(main())
