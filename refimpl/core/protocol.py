"""The child <-> router line protocol (ROUTER.md section 2): reader, parser and formatters.

The parser's one promise, and the sentence the fuzz tests check: *``parse_line`` never raises; every
input is a message, a :class:`LogLine` or a :class:`Rejection`.* Only a line that starts with
:data:`STATE_PREFIX` can be a message; a rejection never changes a model's state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Union

STATE_PREFIX = b"cmd_child_to_router:state:"
EXIT_COMMAND = b"cmd_router_to_child:exit\n"
MAX_LINE = 1024 * 1024  # a line longer than this, without a newline, is dropped


# -- messages, child -> router -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """Load progress: which stage is loading and how far it got (0.0 .. 1.0)."""

    stages: tuple[str, ...]
    current: str
    value: float


@dataclass(frozen=True, slots=True)
class StageStarted:
    """A load stage begins, said with no stage list and no value: llama-server's child sends
    ``{"stage": "mmproj_model"}`` as it starts its projector (server-context.cpp, load_model),
    and its router publishes that payload as it came."""

    stage: str


@dataclass(frozen=True, slots=True)
class LoadingState:
    progress: Progress | StageStarted | None = None


@dataclass(frozen=True, slots=True)
class ReadyState:
    """``info`` is the child's ``/v1/models`` entry on first load, ``{}`` on waking from sleep."""

    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ReadyState(info={self.info!r})"


@dataclass(frozen=True, slots=True)
class SleepingState:
    pass


@dataclass(frozen=True, slots=True)
class DownloadProgress:
    url: str
    downloaded: int
    total: int


@dataclass(frozen=True, slots=True)
class DownloadResult:
    ok: bool


Message = Union[LoadingState, ReadyState, SleepingState, DownloadProgress, DownloadResult]


@dataclass(frozen=True, slots=True)
class LogLine:
    """Anything on a child's output that is not a command; forwarded to the log."""

    text: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """A line that starts with the command prefix but is not a valid message."""

    reason: str
    line: bytes


@dataclass(frozen=True, slots=True)
class Overlong:
    """Stands for a line that grew past :data:`MAX_LINE` and was dropped unread."""

    length: int


Parsed = Union[Message, LogLine, Rejection]


# -- reader --------------------------------------------------------------------------------------


class LineReader:
    """Reassembles lines from arbitrary chunks of bytes.

    ``feed`` returns the complete lines (without ``\\n``, a trailing ``\\r`` removed) in order; a
    line that grows past ``max_line`` is dropped and reported once as :class:`Overlong`, and the
    bytes up to its newline are skipped. ``finish`` hands out a final unterminated line at EOF.
    """

    __slots__ = ("_buf", "_skipping", "_skipped", "max_line")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._skipping = False
        self._skipped = 0
        self.max_line = max_line

    def feed(self, data: bytes) -> list[bytes | Overlong]:
        out: list[bytes | Overlong] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._take_partial(data[start:], out)
                return out
            piece = data[start:nl]
            start = nl + 1
            if self._skipping:
                out.append(Overlong(self._skipped + len(piece)))
                self._skipping = False
                self._skipped = 0
            elif len(self._buf) + len(piece) > self.max_line:
                out.append(Overlong(len(self._buf) + len(piece)))
                self._buf.clear()
            else:
                self._buf += piece
                out.append(_strip_cr(bytes(self._buf)))
                self._buf.clear()

    def _take_partial(self, rest: bytes, out: list[bytes | Overlong]) -> None:
        if self._skipping:
            self._skipped += len(rest)
        elif len(self._buf) + len(rest) > self.max_line:
            self._skipping = True
            self._skipped = len(self._buf) + len(rest)
            self._buf.clear()
        else:
            self._buf += rest

    def finish(self) -> list[bytes | Overlong]:
        """At EOF: the last line if it had no newline (or its over-long marker)."""
        if self._skipping:
            self._skipping = False
            skipped, self._skipped = self._skipped, 0
            return [Overlong(skipped)]
        if not self._buf:
            return []
        line = _strip_cr(bytes(self._buf))
        self._buf.clear()
        return [line]


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


# -- parser --------------------------------------------------------------------------------------


def parse_line(line: bytes | Overlong) -> Parsed:
    """One line of child output -> a message, a log line or a rejection. Never raises."""
    if isinstance(line, Overlong):
        return Rejection(f"line of {line.length} bytes exceeds {MAX_LINE} bytes; dropped", b"")
    if not line.startswith(STATE_PREFIX):
        return LogLine(line.decode("utf-8", errors="replace"))
    body = line[len(STATE_PREFIX):]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection("not valid UTF-8", line)
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        return Rejection(f"invalid JSON: {exc}", line)
    if not isinstance(obj, dict):
        return Rejection("message is not a JSON object", line)
    state = obj.get("state")
    payload = obj.get("payload")
    if payload is None:  # llama-server writes its empty payloads ({} in C++) as null
        payload = {}
    if not isinstance(state, str):
        return Rejection("'state' is missing or not a string", line)
    if not isinstance(payload, dict):
        return Rejection("'payload' is not a JSON object", line)
    build = _BUILDERS.get(state)
    if build is None:
        return Rejection(f"unknown state {state!r}", line)
    result = build(payload)
    if isinstance(result, str):
        return Rejection(f"state {state!r}: {result}", line)
    return result


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 overflows to inf, which JSON cannot carry back out
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):  # may be far too big for a float: compare it as an int
        return True
    return isinstance(value, float) and math.isfinite(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _build_loading(payload: dict[str, Any]) -> LoadingState | str:
    if not payload:
        return LoadingState()
    if "stage" in payload and not _PROGRESS_KEYS & payload.keys():
        stage = payload["stage"]
        if not isinstance(stage, str):
            return "'stage' must be a string"
        return LoadingState(StageStarted(stage))
    stages = payload.get("stages", [])
    current = payload.get("current", "")
    value = payload.get("value", 0.0)
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        return "'stages' must be a list of strings"
    if not isinstance(current, str):
        return "'current' must be a string"
    if not _number(value) or not 0 <= value <= 1:
        return "'value' must be a number in 0..1"
    return LoadingState(Progress(tuple(stages), current, float(value)))


_PROGRESS_KEYS = frozenset({"stages", "current", "value"})


def _build_ready(payload: dict[str, Any]) -> ReadyState:
    return ReadyState(payload)


def _build_sleeping(payload: dict[str, Any]) -> SleepingState:
    return SleepingState()


def _build_downloading(payload: dict[str, Any]) -> DownloadProgress | DownloadResult | str:
    if "result" in payload:
        result = payload["result"]
        if result == "download_finished":
            return DownloadResult(ok=True)
        if result == "download_failed":
            return DownloadResult(ok=False)
        return f"unknown result {result!r}"
    url, done, total = payload.get("url"), payload.get("downloaded"), payload.get("total")
    if not isinstance(url, str):
        return "'url' must be a string"
    if not _count(done) or not _count(total):
        return "'downloaded' and 'total' must be non-negative integers"
    assert isinstance(done, int) and isinstance(total, int)
    return DownloadProgress(url, done, total)


_BUILDERS: dict[str, Callable[[dict[str, Any]], Message | str]] = {
    "loading": _build_loading,
    "ready": _build_ready,
    "sleeping": _build_sleeping,
    "downloading": _build_downloading,
}


# -- formatters ----------------------------------------------------------------------------------


def format_message(message: Message) -> bytes:
    """The exact line (with its newline) a child writes for ``message``."""
    state: str
    payload: dict[str, Any]
    if isinstance(message, LoadingState):
        state = "loading"
        payload = progress_payload(message.progress)
    elif isinstance(message, ReadyState):
        state, payload = "ready", message.info
    elif isinstance(message, SleepingState):
        state, payload = "sleeping", {}
    elif isinstance(message, DownloadProgress):
        state = "downloading"
        payload = {"url": message.url, "downloaded": message.downloaded, "total": message.total}
    else:
        state = "downloading"
        payload = {"result": "download_finished" if message.ok else "download_failed"}
    body = json.dumps({"state": state, "payload": payload}, separators=(",", ":"),
                      ensure_ascii=True)
    return STATE_PREFIX + body.encode("ascii") + b"\n"


def progress_payload(progress: Progress | StageStarted | None) -> dict[str, Any]:
    """A ``loading`` message's payload: also what the router publishes as its ``progress``."""
    if progress is None:
        return {}
    if isinstance(progress, StageStarted):
        return {"stage": progress.stage}
    return {"stages": list(progress.stages), "current": progress.current,
            "value": progress.value}


def format_exit() -> bytes:
    """The router -> child line that asks a child to exit gracefully."""
    return EXIT_COMMAND
