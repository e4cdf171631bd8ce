"""``python -m properties.mutation``: mutmut over ``refimpl/core``, scored per file.

The first run is the property suites alone: the test selection of ``[tool.mutmut]`` in
``pyproject.toml`` (``properties/``: the state machine, the sweeps, the invariants' own tests, the
protocol laws). With ``--suite both`` a second run uses the whole core-level suite (the property
suites and the core's example tests); ``--suite core`` makes only that one. Each run starts from
an empty ``mutants/`` folder, under the ``mutation`` hypothesis profile (derandomized, no example
database), so the same code gives the same verdicts.

A file's score is (killed + timeout) / (generated - equivalent). Every mutant a run does not
kill is listed with its diff and its classification from ``properties/mutants_equivalent.toml``:
``equivalent: why`` (no test can tell it from the original) or ``accepted gap: why`` (a
difference the suites do not look at, on purpose). An entry whose mutant no longer exists, is now
killed, or is now a different change is reported as stale. ``--write docs/MUTANTS.md`` writes the
whole document: both runs, every survivor, and the bug zoo's table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

MUTATED = Path("refimpl/core")
CLASSIFICATION = Path("properties/mutants_equivalent.toml")
SAVED = Path("out/mutation")  # each run's results, for --report-only
# The whole core-level suite: the property suites and the core's own tests, none of which starts a
# process or a server. Tests that apply a bug-zoo mutant are left out (of test_bugzoo.py, only the
# scenarios on the correct core run): a zoo mutant edits its module's source text, which cannot
# apply to a file mutmut has rewritten, and they test the zoo, not the core.
CORE_LEVEL_TESTS = ["tests/test_core.py", "tests/test_scheduler.py", "tests/test_lifecycle.py",
                    "tests/test_protocol.py", "tests/test_download_core.py",
                    "tests/test_simulator.py",
                    "tests/test_bugzoo.py::test_scenario_holds_on_correct_core"]
CORE_LEVEL_DESELECT = [
    "tests/test_protocol.py::test_z14_mutant_aborts_the_router",
    "tests/test_download_core.py::test_z15_leaves_the_model_downloaded_and_its_requests_unanswered",
    "tests/test_simulator.py::test_sweep_lists_failing_seeds_with_replay",
]
# The mutant's verdict, from mutmut's exit-code table, folded into the columns we report.
COLUMNS = ("killed", "timeout", "suspicious", "survived", "no tests", "not checked")
FOLD = {"killed": "killed", "timeout": "timeout", "survived": "survived", "no tests": "no tests",
        "skipped": "no tests", "not checked": "not checked"}
NOT_KILLED = ("survived", "no tests", "suspicious", "not checked")
KINDS = ("equivalent", "accepted gap")

# mutmut reads its configuration from pyproject.toml; this launcher swaps the test selection for
# the second run and then hands over to mutmut's own command line, unchanged otherwise.
_LAUNCH = """
import sys
from mutmut.configuration import config
cut = sys.argv.index("--")
config().pytest_add_cli_args_test_selection[:] = sys.argv[1:cut]
from mutmut.__main__ import cli
cli(sys.argv[cut + 1:], prog_name="mutmut")
"""


@dataclass(frozen=True)
class Suite:
    key: str
    title: str
    selection: list[str]
    command: str  # how to run just this by hand


@dataclass
class Mutant:
    name: str
    file: str
    function: str
    status: str
    diff: str = ""  # kept for the mutants a run did not kill


@dataclass
class Run:
    suite: Suite
    seconds: float
    mutants: dict[str, Mutant]
    versions: dict[str, str] = field(default_factory=dict)
    partial: bool = False

    def by_file(self) -> dict[str, list[Mutant]]:
        files: dict[str, list[Mutant]] = {}
        for m in self.mutants.values():
            files.setdefault(m.file, []).append(m)
        return dict(sorted(files.items()))


@dataclass(frozen=True)
class Verdict:
    kind: str  # "equivalent" or "accepted gap"
    why: str
    change: str  # the mutant's -/+ lines when it was classified; "" pins nothing


# -- the suites ----------------------------------------------------------------------------------


def mutmut_config() -> dict[str, Any]:
    try:
        config: dict[str, Any] = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]
    except (FileNotFoundError, KeyError):
        sys.exit("properties.mutation: run it from the project's root (pyproject.toml with a "
                 "[tool.mutmut] section)")
    return config


def suites() -> dict[str, Suite]:
    properties = list(mutmut_config()["pytest_add_cli_args_test_selection"])
    core = [*properties, *(t for t in CORE_LEVEL_TESTS if Path(t.partition("::")[0]).exists()),
            *(f"--deselect={t}" for t in CORE_LEVEL_DESELECT)]
    return {
        "properties": Suite("properties", "The property suites alone", properties,
                            "mutmut run --max-children 2"),
        "core": Suite("core", "The whole core-level suite", core,
                      "python -m properties.mutation --suite core"),
    }


# -- running mutmut ------------------------------------------------------------------------------


def run_mutmut(selection: list[str], max_children: int, only: list[str]) -> float:
    """One mutmut run from an empty mutants/ folder; its output goes straight to ours."""
    shutil.rmtree("mutants", ignore_errors=True)
    cmd = [sys.executable, "-c", _LAUNCH, *selection, "--",
           "run", "--max-children", str(max_children), *only]
    started = time.monotonic()
    code = subprocess.run(cmd).returncode
    seconds = time.monotonic() - started
    print()
    if code != 0:
        sys.exit(f"properties.mutation: mutmut exited with {code} after {seconds:.0f} s (a red "
                 f"clean run stops it: run `python -m pytest {shlex.join(selection)}` to see why)")
    return seconds


def function_of(name: str) -> str:
    """``refimpl.core.router.xǁRouterCoreǁ_on_request__mutmut_3``: ``RouterCore._on_request``."""
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key
    func, cls = orig_function_and_class_names_from_key(name)
    return f"{cls}.{func}" if cls else func


def collect() -> dict[str, Mutant]:
    """Every mutant of the last run, read from mutmut's meta files, with diffs of the unkilled."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    found: dict[str, Mutant] = {}
    for meta in sorted((Path("mutants") / MUTATED).glob("*.py.meta")):
        source = str(meta.relative_to("mutants"))[:-len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in codes.items():
            status = FOLD.get(status_by_exit_code[code], "suspicious")
            diff = get_diff_for_mutant(name, path=source) if status in NOT_KILLED else ""
            found[name] = Mutant(name, source, function_of(name), status, diff)
    return found


def core_digest() -> str:
    """A digest of the mutated code, ``refimpl/core/*.py`` less what mutmut is told to leave
    (``do_not_mutate``: the diagram's command line): two runs with the same digest mutated the
    same core (the git commit alone does not say so when the tree has changes)."""
    import hashlib
    digest = hashlib.sha256()
    kept = set(mutmut_config().get("do_not_mutate", []))  # never mutated: not the core's code
    for path in sorted(MUTATED.glob("*.py")):
        if str(path) in kept:
            continue
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def versions() -> dict[str, str]:
    from importlib.metadata import version
    found = {"python": platform.python_version(), "mutmut": version("mutmut"),
             "hypothesis": version("hypothesis"), "pytest": version("pytest"),
             "core": core_digest(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                         text=True)
    if git.returncode == 0:
        found["code"] = git.stdout.strip()
    return found


def save(run: Run) -> None:
    SAVED.mkdir(parents=True, exist_ok=True)
    data = {"suite": asdict(run.suite), "seconds": run.seconds, "versions": run.versions,
            "partial": run.partial, "mutants": [asdict(m) for m in run.mutants.values()]}
    (SAVED / f"{run.suite.key}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False))


def load(key: str) -> Run | None:
    path = SAVED / f"{key}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    mutants = {m["name"]: Mutant(**m) for m in data["mutants"]}
    return Run(Suite(**data["suite"]), data["seconds"], mutants, data["versions"], data["partial"])


def run_again(suite: Suite, key: str, max_children: int) -> Run:
    """The saved ``key`` run, with the mutants it did not kill run again against the tests as
    they are now. A mutant the old tests killed stays killed (tests were added, the core is the
    same), so the result is what a whole run with today's tests gives, in a fraction of the
    time; the core must be unchanged, or the saved verdicts would be of other code."""
    saved = load(key)
    if saved is None or saved.partial:
        sys.exit(f"properties.mutation: no whole saved {key} run in {SAVED}/ to run again")
    if saved.versions.get("core") != core_digest():
        sys.exit(f"properties.mutation: the saved {key} run mutated core "
                 f"{saved.versions.get('core')}, not this one ({core_digest()}): run it whole")
    names = sorted(m.name for m in saved.mutants.values() if m.status in NOT_KILLED)
    print(f"{suite.title}: running again the {len(names)} mutants the saved run did not kill",
          flush=True)
    now = versions()
    # No stale test selection to refresh: run_mutmut starts from an empty mutants/ folder, so
    # mutmut collects its stats (which tests reach which function) afresh over today's tests,
    # and a law added since the saved run is run against every survivor whose function it
    # reaches.
    seconds = run_mutmut(suite.selection, max_children, names) if names else 0.0
    again = collect() if names else {}
    for name in names:
        if name in again and again[name].status != "not checked":
            saved.mutants[name] = again[name]
    said = (f"the {len(names)} mutants it did not kill were run again {now['started']} "
            f"against the tests of code {now.get('code', '?')}")
    before = saved.versions.get("again")
    saved.versions["again"] = f"{before}; then {said[len('the '):]}" if before else said
    saved.seconds += seconds
    save(saved)
    return saved


# -- the classification --------------------------------------------------------------------------


def change_of(diff: str) -> str:
    """The removed and added lines of a mutant's diff, without the file headers."""
    return "\n".join(line.rstrip() for line in diff.splitlines()
                     if line.startswith(("-", "+")) and not line.startswith(("---", "+++")))


def load_classification(path: Path) -> dict[str, Verdict]:
    """``[mutants."NAME"]`` tables with ``verdict = "equivalent: why"`` or ``"accepted gap:
    why"`` and, optionally, ``change`` (the -/+ lines it was classified for)."""
    if not path.exists():
        return {}
    table = tomllib.loads(path.read_text()).get("mutants", {})
    verdicts: dict[str, Verdict] = {}
    for name, entry in table.items():
        kind, sep, why = str(entry.get("verdict", "")).partition(":")
        if not sep or kind.strip() not in KINDS or not why.strip():
            sys.exit(f"{path}: {name}: verdict must read 'equivalent: why' or "
                     f"'accepted gap: why', not {entry.get('verdict')!r}")
        verdicts[name] = Verdict(kind.strip(), why.strip(), change_of(entry.get("change", "")))
    return verdicts


def stale_entries(verdicts: dict[str, Verdict], run: Run) -> dict[str, str]:
    """Entries that no longer describe a surviving mutant of ``run``, and why."""
    stale: dict[str, str] = {}
    for name, verdict in verdicts.items():
        mutant = run.mutants.get(name)
        if mutant is None:
            if not run.partial:
                stale[name] = "no such mutant any more"
        elif mutant.status == "not checked":  # a partial or interrupted run: nothing known
            continue
        elif mutant.status != "survived":
            stale[name] = f"now {mutant.status}"
        elif verdict.change and verdict.change != change_of(mutant.diff):
            stale[name] = "the mutant of that name is now a different change"
    return stale


def stub(mutant: Mutant) -> str:
    """A classification entry to fill in."""
    change = change_of(mutant.diff).replace("'''", "' ' '")
    return (f'[mutants."{mutant.name}"]\nverdict = "TODO equivalent or accepted gap: why"\n'
            f"change = '''\n{change}\n'''\n")


# -- the numbers ---------------------------------------------------------------------------------


@dataclass
class Row:
    file: str
    counts: Counter[str]
    equivalent: int
    gaps: int
    unclassified: int

    @property
    def generated(self) -> int:
        return sum(self.counts.values())

    @property
    def caught(self) -> int:
        return self.counts["killed"] + self.counts["timeout"]

    @property
    def score(self) -> float | None:
        denominator = self.generated - self.equivalent
        return self.caught / denominator if denominator else None


def rows(run: Run, verdicts: dict[str, Verdict], stale: dict[str, str]) -> list[Row]:
    def row(file: str, mutants: list[Mutant]) -> Row:
        kinds = Counter(verdicts[m.name].kind for m in mutants
                        if m.status == "survived" and m.name in verdicts and m.name not in stale)
        survived = sum(m.status == "survived" for m in mutants)
        return Row(file, Counter(m.status for m in mutants), kinds["equivalent"],
                   kinds["accepted gap"], survived - kinds["equivalent"] - kinds["accepted gap"])
    table = [row(file, mutants) for file, mutants in run.by_file().items()]
    table.append(row("all", list(run.mutants.values())))
    return table


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def percent(score: float | None) -> str:
    return "-" if score is None else f"{100 * score:.1f} %"


def markdown_table(table: list[Row]) -> str:
    unrun = any(r.counts["not checked"] for r in table)  # an interrupted run
    head = ("| file | generated | killed | timeout | suspicious | survived | no tests "
            + ("| not checked " if unrun else "")
            + "| equivalent | accepted gap | unclassified | score |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table:
        name = "**all**" if r.file == "all" else f"`{r.file}`"
        c = r.counts
        lines.append(f"| {name} | {r.generated} | {c['killed']} | {c['timeout']} "
                     f"| {c['suspicious']} | {c['survived']} | {c['no tests']} "
                     + (f"| {c['not checked']} " if unrun else "")
                     + f"| {r.equivalent} | {r.gaps} | {r.unclassified} | {percent(r.score)} |")
    return "\n".join(lines)


def console_table(table: list[Row]) -> str:
    head = (f"{'file':28} {'gen':>5} {'kill':>5} {'time':>5} {'susp':>5} {'surv':>5} "
            f"{'none':>5} {'unrun':>5} {'equiv':>5} {'gap':>5} {'open':>5}  score")
    lines = [head]
    for r in table:
        c = r.counts
        lines.append(f"{r.file:28} {r.generated:5} {c['killed']:5} {c['timeout']:5} "
                     f"{c['suspicious']:5} {c['survived']:5} {c['no tests']:5} "
                     f"{c['not checked']:5} {r.equivalent:5} {r.gaps:5} {r.unclassified:5}  "
                     f"{percent(r.score)}")
    return "\n".join(lines)


# -- docs/MUTANTS.md -----------------------------------------------------------------------------


ZOO_MARK = "<!-- properties.zoo -->"


ZOO_HEADING = "## The bug zoo"


def zoo_section(zoo_table: Path | None, previous: str) -> str:
    """The bug zoo's part of the document: its prose, then the block between the marks that
    ``python -m properties.zoo --write`` rewrites in place. The block is the markdown that
    ``python -m properties.zoo --markdown FILE`` wrote (``--zoo-table FILE``), else the previous
    document's; the prose is the previous document's. This is the one place that knows the zoo."""
    try:
        from properties.zoo import MARK as mark
    except Exception:  # the zoo's runner is optional here; its mark is all this needs from it
        mark = ZOO_MARK
    prose, block = "", ""
    if mark in previous:
        before, _, rest = previous.partition(mark)
        block = rest.partition(mark)[0].strip()
        if ZOO_HEADING in before:  # a document written here
            prose = before.rpartition(ZOO_HEADING)[2].strip()
        else:  # a document the zoo wrote alone: its prose follows the title
            prose = before.partition("\n")[2].strip()
    if zoo_table is not None:
        block = zoo_table.read_text().replace(mark, "").strip()
    if not block:
        block = ("Not part of this run: `python -m properties.zoo --markdown zoo.md`, then "
                 "`--zoo-table zoo.md` here, puts its table in this place.")
    return "\n".join([ZOO_HEADING, "", *([prose, ""] if prose else []), mark, block, mark, ""])


def run_section(run: Run, verdicts: dict[str, Verdict], stale: dict[str, str],
                current: Run | None = None) -> str:
    """One run's table; ``current`` is the document's first run: a run of other code says so."""
    selection = shlex.join(run.suite.selection)
    v = run.versions
    when = (f" Started {v.get('started', 'at an unrecorded time')} on code "
            f"{v.get('code', '?')} (digest of `{MUTATED}`: {v.get('core', 'not recorded')})"
            + (f"; {v['again']} (`--again`)." if v.get("again") else "."))
    note: list[str] = []
    if current is not None and current is not run and (
            v.get("core") is None or v.get("core") != current.versions.get("core")):
        note = [f"**Not current**: this run mutated another version of `{MUTATED}` than the run "
                f"above did (digest {v.get('core', 'not recorded')}, not "
                f"{current.versions.get('core', '?')}); its figures are older. Rerun it with "
                f"`{run.suite.command}`.", ""]
    return "\n".join([
        f"### {run.suite.title}", "",
        f"Tests: `{selection}` (`{run.suite.command}`). "
        f"{len(run.mutants)} mutants in {duration(run.seconds)}.{when}", "",
        *note,
        markdown_table(rows(run, verdicts, stale)), "",
    ])


def survivor_entry(m: Mutant, verdicts: dict[str, Verdict], stale: dict[str, str],
                   later: Run | None) -> str:
    verdict = verdicts.get(m.name)
    if verdict is not None and m.name not in stale:
        said = f"**{verdict.kind}**: {verdict.why}"
    elif m.status == "survived":
        said = "**unclassified**"
    else:
        why = "reaches" if m.status == "no tests" else "decided"
        said = f"**{m.status}**: no test of the suite {why} it"
    fate = ""
    if later is not None and m.name in later.mutants:
        fate = f" Whole core-level suite: {later.mutants[m.name].status}."
    body = [line for line in m.diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    return "\n".join([f"- `{m.name}` ({m.status}). {said}.{fate}", "",
                      "  ```diff", *("  " + line for line in body), "  ```", ""])


def survivors_section(first: Run, verdicts: dict[str, Verdict], stale: dict[str, str],
                      later: Run | None) -> str:
    lines = [f"### Every mutant not killed: {first.suite.title.lower()}", "",
             "Grouped by file and function, each with its diff, its classification"
             + (" and its fate under the whole core-level suite." if later else "."), ""]
    for file, mutants in first.by_file().items():
        unkilled = [m for m in mutants if m.status in NOT_KILLED]
        if not unkilled:
            continue
        lines += [f"#### `{file}`", ""]
        functions: dict[str, list[Mutant]] = {}
        for m in unkilled:
            functions.setdefault(m.function, []).append(m)
        for function, group in functions.items():
            lines += [f"##### `{function}` ({len(group)})", ""]
            lines += [survivor_entry(m, verdicts, stale, later) for m in group]
    if later is not None:
        extra = [m for m in later.mutants.values() if m.status in NOT_KILLED
                 and first.mutants.get(m.name, m).status not in NOT_KILLED]
        if extra:
            lines += ["#### Killed by the property suites but not by the whole core-level suite",
                      ""]
            lines += [survivor_entry(m, verdicts, stale, None) for m in extra]
    if stale:
        lines += ["### Stale classifications", "",
                  f"Entries of `{CLASSIFICATION}` that no longer describe a survivor:", ""]
        lines += [f"- `{name}`: {why}" for name, why in sorted(stale.items())]
        lines.append("")
    return "\n".join(lines)


def document(runs: list[Run], verdicts: dict[str, Verdict], stale: dict[str, str],
             zoo_table: Path | None, previous: str = "") -> str:
    first = runs[0]
    later = runs[1] if len(runs) > 1 else None
    v = first.versions
    profile = "`mutation`"
    command = "python -m properties.mutation" + (" --suite both" if later else "") + \
        " --write docs/MUTANTS.md" + (f" --zoo-table {zoo_table}" if zoo_table else "")
    parts = [
        "# Mutants: mutation testing of the core, and the bug zoo", "",
        f"Written whole by `{command}`; edit the classification "
        f"(`{CLASSIFICATION}`), not this file.", "",
        "## mutmut over `refimpl/core`", "",
        f"mutmut {v.get('mutmut', '?')} (Python {v.get('python', '?')}, hypothesis "
        f"{v.get('hypothesis', '?')}, code {v.get('code', '?')}) generates mutants of every function in `refimpl/core/*.py` "
        "(not `__main__.py`; configuration: `[tool.mutmut]` in `pyproject.toml`) and runs each "
        "against the tests that reached its function in a clean run, fastest first, stopping "
        f"at the first failure; hypothesis runs under the {profile} profile (`conftest.py`: "
        "derandomized, no example database), so a rerun of the same code gives the same "
        "verdicts. Two processes at a time (`--max-children 2`).", "",
        "Score per file: (killed + timeout) / (generated - equivalent). A *timeout* is a mutant "
        "whose tests ran far past their time in the clean run (a loop that never ends); "
        "*suspicious*, one whose tests ended oddly (a crash); *no tests*, one whose function no "
        "selected test reaches. Every mutant a run does not kill is listed below with its diff; "
        f"a survivor is *equivalent* (no test can tell it from the original) or an *accepted gap* "
        f"(a difference the suites leave alone on purpose), as `{CLASSIFICATION}` says, or "
        "*unclassified*.", "",
        "Commands:", "", "```sh", command,
        "python -m properties.mutation                  # the property suites alone, printed",
        "rm -rf mutants && mutmut run --max-children 2  # the first run by hand; mutmut results",
        "mutmut show NAME                               # one mutant's diff",
        "python -m properties.mutation --suite both --again  # tests added: rerun what survived",
        "python -m properties.mutation --report-only --write docs/MUTANTS.md  "
        "# after editing the classification", "```", "",
    ]
    parts += [run_section(run, verdicts, stale, first) for run in runs]
    parts.append(survivors_section(first, verdicts, stale, later))
    parts.append(zoo_section(zoo_table, previous))
    return "\n".join(parts).rstrip() + "\n"


# -- the command ---------------------------------------------------------------------------------


def print_run(run: Run, verdicts: dict[str, Verdict], stale: dict[str, str]) -> None:
    print(f"\n{run.suite.title}: {len(run.mutants)} mutants in {duration(run.seconds)}"
          + (" (partial run)" if run.partial else ""))
    print(console_table(rows(run, verdicts, stale)))


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m properties.mutation",
        description="mutmut over refimpl/core with the property suites alone (and/or the "
                    "whole core-level suite): per-file scores, every survivor with its "
                    "classification, docs/MUTANTS.md.")
    parser.add_argument("--suite", choices=["properties", "core", "both"], default="properties",
                        help="the property suites alone (default), the whole core-level suite, "
                             "or both, one run after the other")
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help="write the whole document (docs/MUTANTS.md) there")
    parser.add_argument("--zoo-table", type=Path, metavar="FILE",
                        help="markdown from `python -m properties.zoo --markdown FILE`, "
                             "included as the bug zoo's section")
    parser.add_argument("--max-children", type=int, default=2, metavar="N",
                        help="mutants tested at once (default 2)")
    parser.add_argument("--classification", type=Path, default=CLASSIFICATION, metavar="FILE",
                        help=f"the survivors' classification (default {CLASSIFICATION})")
    parser.add_argument("--report-only", action="store_true",
                        help=f"run nothing: report the runs saved in {SAVED}/")
    parser.add_argument("--again", action="store_true",
                        help="run again only the mutants the saved run did not kill, against "
                             "the tests as they are now (the core must be the one that run "
                             "mutated: the same digest); the saved run takes the new verdicts, "
                             "and the document says when and on which code they were reached")
    parser.add_argument("--stubs", type=Path, metavar="FILE",
                        help="write classification entries to fill in for unclassified survivors")
    parser.add_argument("--only", nargs="+", default=[], metavar="GLOB",
                        help="only these mutants (mutmut names or globs, e.g. "
                             "'refimpl.core.protocol.*'); a partial run, never written")
    parser.add_argument("--tests", nargs="+", metavar="ARG",
                        help="this test selection instead of the suite's; a partial run")
    parser.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                        help="leave this test out of every run (say why in the report: it is "
                             "named in the document's test selection)")
    args = parser.parse_args(None if argv is None else list(argv))
    partial = bool(args.only or args.tests)
    if args.again and (partial or args.report_only):
        parser.error("--again re-runs a whole saved run: leave out --only, --tests and "
                     "--report-only")
    if partial and args.write:
        parser.error("--write wants a whole run: leave out --only and --tests")
    if args.zoo_table and not args.zoo_table.exists():
        parser.error(f"--zoo-table {args.zoo_table}: no such file")

    verdicts = load_classification(args.classification)
    keys = ["properties", "core"] if args.suite == "both" else [args.suite]
    runs: list[Run] = []
    for i, key in enumerate(keys, 1):
        suite = suites()[key]
        if args.deselect or args.tests:
            selection = [*(args.tests or suite.selection),
                         *(f"--deselect={t}" for t in args.deselect)]
            suite = Suite(suite.key, suite.title, selection, suite.command)
        if args.again:
            runs.append(run_again(suite, key, args.max_children))
            continue
        if args.report_only:
            saved = load(key)
            if saved is None:
                sys.exit(f"properties.mutation: no saved {key} run in {SAVED}/")
            runs.append(saved)
            continue
        print(f"[{i}/{len(keys)}] {suite.title}: mutmut run --max-children {args.max_children} "
              f"over {MUTATED}/, tests: {' '.join(suite.selection)}", flush=True)
        before = versions()  # of the code the run copies at its start
        seconds = run_mutmut(suite.selection, args.max_children, args.only)
        run = Run(suite, seconds, collect(), before, partial)
        save(run)
        runs.append(run)

    if args.write and any(run.partial for run in runs):
        parser.error("--write wants whole runs: a saved run was partial (--only or --tests)")
    # An entry is stale when it describes a surviving mutant of no run (a mutant the property
    # suites time out on may still survive the core-level suite, where its verdict holds).
    per_run = [stale_entries(verdicts, run) for run in runs]
    stale = {name: why for name, why in per_run[0].items()
             if all(name in other for other in per_run[1:])}
    for run in runs:
        print_run(run, verdicts, stale)
    for name, why in sorted(stale.items()):
        print(f"stale classification: {name}: {why}")
    open_ = [m for m in runs[0].mutants.values()
             if m.status == "survived" and (m.name not in verdicts or m.name in stale)]
    print(f"{len(open_)} unclassified survivors of {runs[0].suite.title.lower()}"
          + (f"; see {args.write}" if args.write else "; --write FILE lists them with diffs"))
    if args.stubs:
        args.stubs.write_text("".join(stub(m) + "\n" for m in open_))
        print(f"wrote {len(open_)} entries to fill in to {args.stubs}")
    if args.write:
        previous = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(document(runs, verdicts, stale, args.zoo_table, previous))
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
