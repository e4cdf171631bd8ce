"""Hypothesis strategies for the child -> router line protocol, and the helpers that read their
lines back: every message kind, lines with exactly one defect each (and the reason the parser must
give for it), arbitrary byte streams and ways of cutting them into reads.

Shared by the parser's laws (``properties/test_protocol_laws.py``) and its example tests
(``tests/test_protocol.py``).
"""

from __future__ import annotations

import json
from typing import Any, get_args

from hypothesis import strategies as st

from refimpl.core import ModelSpec, RequestArrived, RouterConfig, RouterCore, Spawn, Status
from refimpl.core.protocol import (MAX_LINE, STATE_PREFIX, DownloadProgress, DownloadResult,
                                   LineReader, LoadingState, Message, Overlong, Parsed, Progress,
                                   ReadyState, SleepingState, format_message, parse_line)

P = STATE_PREFIX
MESSAGE_TYPES: tuple[type, ...] = get_args(Message)
# The state name each kind of message travels under (ROUTER.md section 2).
STATE_OF: dict[type, str] = {LoadingState: "loading", ReadyState: "ready",
                             SleepingState: "sleeping", DownloadProgress: "downloading",
                             DownloadResult: "downloading"}
STATES = ("loading", "ready", "sleeping", "downloading")

# -- messages ------------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | st.text())
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=5)
progresses = st.builds(Progress, st.lists(st.text(), max_size=4).map(tuple), st.text(),
                       st.floats(min_value=0.0, max_value=1.0))
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(LoadingState, st.none() | progresses),
    st.builds(ReadyState, json_objects),
    st.just(SleepingState()),
    st.builds(DownloadProgress, st.text(), st.integers(min_value=0), st.integers(min_value=0)),
    st.builds(DownloadResult, st.booleans()),
)

# Prefixed lines whose JSON is well formed but whose state or payload may be anything.
states = st.sampled_from(["loading", "ready", "sleeping", "downloading"]) | st.text(max_size=12)
payload_keys = st.sampled_from(["stages", "current", "value", "url", "downloaded", "total",
                                "result"]) | st.text(max_size=8)
# 10**400 is there because it once crashed parse_line (math.isfinite on a huge int).
small_json_scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.just(10**400)
                      | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
                      | st.sampled_from(["download_finished", "download_failed"]))
small_json_values = st.recursive(
    small_json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(payload_keys, inner, max_size=3),
    max_leaves=8,
)
structured_lines = st.fixed_dictionaries(
    {}, optional={"state": states | small_json_values, "payload": small_json_values
                  | st.dictionaries(payload_keys, small_json_values, max_size=4)},
).map(lambda obj: STATE_PREFIX + json.dumps(obj).encode())


def message_line(m: Message) -> bytes:
    """The line a child writes for ``m``, without its newline."""
    return format_message(m)[:-1]


def prefixed(obj: Any) -> bytes:
    return P + json.dumps(obj).encode()


# -- lines with one defect, and the reason each must be rejected with ----------------------------

def _not(*kinds: type) -> st.SearchStrategy[Any]:
    """A JSON value that is none of ``kinds`` (bool is never an int here)."""
    def ok(v: Any) -> bool:
        if isinstance(v, bool):
            return bool not in kinds
        return not isinstance(v, kinds)
    return small_json_values.filter(ok)


LOADING = "state 'loading': "
DOWNLOADING = "state 'downloading': "
huge_floats = st.one_of(st.integers(309, 2000).map(lambda e: f"1e{e}"),
                        st.integers(309, 2000).map(lambda e: f"-123456789.0123456789e{e}"),
                        st.sampled_from(["9" * 400 + ".0", "1E999"]))


def out_of_range(text: str) -> tuple[bytes, str]:
    line = P + b'{"state":"loading","payload":{"value":' + text.encode() + b"}}"
    return line, f"invalid JSON: number {text[:20]} is out of range"


def _constant(name: str) -> tuple[bytes, str]:
    return P + b'{"state":"ready","payload":{"x":' + name.encode() + b"}}", \
        f"invalid JSON: {name} is not JSON"


def _non_utf8(line: bytes, bad: bytes, at: int) -> tuple[bytes, str]:
    body = line[len(P):]
    at %= len(body) + 1
    return P + body[:at] + bad + body[at:], "not valid UTF-8"


def _truncated(line: bytes, at: int) -> tuple[bytes, str]:
    body = line[len(P):]
    return P + body[:at % len(body)], "invalid JSON: "


def _bad_progress(field: str, value: Any, good: Progress) -> tuple[bytes, str]:
    payload: dict[str, Any] = {"stages": list(good.stages), "current": good.current,
                               "value": good.value}
    payload[field] = value
    reason = {"stages": "'stages' must be a list of strings",
              "current": "'current' must be a string",
              "value": "'value' must be a number in 0..1"}[field]
    return prefixed({"state": "loading", "payload": payload}), LOADING + reason


def _bad_counts(url: str, done: Any, total: Any) -> tuple[bytes, str]:
    return (prefixed({"state": "downloading",
                      "payload": {"url": url, "downloaded": done, "total": total}}),
            DOWNLOADING + "'downloaded' and 'total' must be non-negative integers")


counts = st.integers(min_value=0)
bad_counts = _not(int) | st.integers(max_value=-1)
# (line, reason): a prefixed line with exactly one defect, and the reason it must be rejected
# with. A reason ending in ": " is a prefix (the JSON decoder's own message follows it).
defective_lines: st.SearchStrategy[tuple[bytes, str]] = st.one_of(
    st.builds(_non_utf8, messages.map(message_line),
              st.sampled_from([b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]),
              st.integers(min_value=0)),
    st.builds(_truncated, messages.map(message_line), st.integers(min_value=0)),
    st.tuples(st.sampled_from([b"", b"{'state': 'ready'}", b'{"state":"ready"} x',
                               b"\xef\xbb\xbf{}", b"[" * 5000 + b"]" * 5000]).map(lambda b: P + b),
              st.just("invalid JSON: ")),
    st.sampled_from(["NaN", "Infinity", "-Infinity"]).map(_constant),
    huge_floats.map(out_of_range),
    st.tuples(_not(dict).map(prefixed), st.just("message is not a JSON object")),
    st.tuples(st.fixed_dictionaries({}, optional={"state": _not(str), "payload": small_json_values})
              .map(prefixed), st.just("'state' is missing or not a string")),
    st.tuples(st.fixed_dictionaries({"state": states, "payload": _not(dict, type(None))})
              .map(prefixed), st.just("'payload' is not a JSON object")),
    st.text(max_size=12).filter(lambda s: s not in STATES).flatmap(
        lambda s: st.tuples(st.fixed_dictionaries({"state": st.just(s)},
                                                  optional={"payload": st.none() | json_objects})
                            .map(prefixed), st.just(f"unknown state {s!r}"))),
    st.builds(_bad_progress, st.just("stages"), _not(list) | st.lists(_not(str), min_size=1)
              | st.lists(st.text(max_size=4)).flatmap(lambda ss: _not(str).map(lambda x: [*ss, x])),
              progresses),
    st.builds(_bad_progress, st.just("current"), _not(str), progresses),
    st.builds(_bad_progress, st.just("value"),
              _not(int, float) | st.floats(max_value=-1e-9, allow_infinity=False)
              | st.floats(min_value=1.000001, allow_infinity=False)
              | st.integers(max_value=-1) | st.integers(min_value=2) | st.just(10**400),
              progresses),
    st.builds(lambda r: (prefixed({"state": "downloading", "payload": {"result": r}}),
                         DOWNLOADING + f"unknown result {r!r}"),
              small_json_values.filter(lambda r: r not in ("download_finished",
                                                           "download_failed"))),
    st.builds(lambda u, d, t: (prefixed({"state": "downloading",
                                         "payload": {"url": u, "downloaded": d, "total": t}}),
                               DOWNLOADING + "'url' must be a string"),
              _not(str), counts | bad_counts, counts | bad_counts),
    st.builds(_bad_counts, st.text(max_size=8), bad_counts, counts),
    st.builds(_bad_counts, st.text(max_size=8), counts, bad_counts),
)

# -- streams and reads ---------------------------------------------------------------------------

stream_parts = st.one_of(
    messages.map(format_message),
    messages.map(lambda m: message_line(m) + b"\r\n"),
    structured_lines.map(lambda line: line + b"\n"),
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: P + b),
    st.sampled_from([b"\n", b"\r\n", b"\r", P, b"log " + P]),
)
streams = st.lists(stream_parts, max_size=10).map(b"".join)
cuts = st.lists(st.integers(min_value=0))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length + 1, so any ints will do)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def read_lines(chunks: list[bytes], max_line: int = MAX_LINE) -> list[bytes | Overlong]:
    """Everything a fresh reader hands out for ``chunks``, EOF included; after EOF it is empty."""
    reader = LineReader(max_line)
    lines: list[bytes | Overlong] = []
    for chunk in chunks:
        lines += reader.feed(chunk)
    lines += reader.finish()
    assert reader.finish() == [], "a second EOF gave lines again"
    return lines


def expected_lines(stream: bytes, max_line: int = MAX_LINE) -> list[bytes | Overlong]:
    """An independent oracle for the reader: split on ``\\n``, a last unterminated line counts,
    a line longer than ``max_line`` (its ``\\r`` counted) is Overlong, one trailing ``\\r`` goes."""
    pieces = stream.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return [Overlong(len(p)) if len(p) > max_line else p.removesuffix(b"\r") for p in pieces]


def parse_all(lines: list[bytes | Overlong]) -> list[Parsed]:
    return [parse_line(line) for line in lines]


# -- a core with one model loading ---------------------------------------------------------------

READY_INFO = {"id": "a", "object": "model"}


def loading_core() -> RouterCore:
    """A core whose model "a" is LOADING for request 1 in child instance 1."""
    core = RouterCore(RouterConfig(models=(ModelSpec("a"),), models_max=1))
    out = core.handle(RequestArrived(1, "a"), 0.0)
    assert Spawn(1, "a") in out
    assert status_of(core) is Status.LOADING
    return core


def status_of(core: RouterCore) -> Status:
    return core.models["a"].status
