"""The line protocol's laws (ROUTER.md section 2), each stated for every input rather than by
example: the parser's one promise (*parse_line never raises; every input is a message, a LogLine
or a Rejection*), the round trip of every message kind, the reason each defect is rejected with,
and the reader's reassembly however the child's output is cut into reads. The example tests, with
the bug-zoo rows Z11-Z14 they pin, are in ``tests/test_protocol.py``.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from refimpl.core import ChildOutput, Command, Forward, Log, Publish, RouterCore, Status
from refimpl.core.protocol import (MAX_LINE, STATE_PREFIX, DownloadProgress, DownloadResult,
                                   LineReader, LoadingState, LogLine, Message, Overlong, Parsed,
                                   Progress, ReadyState, Rejection, SleepingState, format_message,
                                   parse_line)

from .protocol_strategies import (MESSAGE_TYPES, READY_INFO, STATE_OF, STATES, P, cuts,
                                  defective_lines, expected_lines, json_objects, loading_core,
                                  message_line, messages, out_of_range, parse_all, prefixed,
                                  progresses, read_lines, split_at, status_of, streams,
                                  structured_lines)

PARSED_TYPES: tuple[type, ...] = (*MESSAGE_TYPES, LogLine, Rejection)


def check_invariant(line: bytes | Overlong, parsed: Parsed) -> None:
    """The fuzz invariant, plus: only a line that starts with the prefix may be a non-log, and an
    accepted message survives a trip through the formatter."""
    assert isinstance(parsed, PARSED_TYPES), parsed
    if isinstance(line, Overlong):
        assert parsed == Rejection(f"line of {line.length} bytes exceeds {MAX_LINE} bytes; dropped",
                                   b"")
    elif not line.startswith(STATE_PREFIX):
        assert parsed == LogLine(line.decode("utf-8", errors="replace"))
    else:
        assert not isinstance(parsed, LogLine)
        if isinstance(parsed, Rejection):
            assert parsed.reason and parsed.line == line
        else:
            assert parse_line(message_line(parsed)) == parsed


# -- the formatter and the round trip ------------------------------------------------------------


@given(messages)
@example(LoadingState())
@example(LoadingState(Progress((), "", 0.0)))
@example(LoadingState(Progress(("text_model", "mmproj"), "mmproj", 1.0)))
@example(ReadyState({}))
@example(ReadyState({"id": "é", "n": [1, 2.5, None, True]}))
@example(SleepingState())
@example(DownloadProgress("", 0, 0))
@example(DownloadProgress("https://h/ü", 5, 2**70))
@example(DownloadResult(True))
@example(DownloadResult(False))
def test_round_trip(m: Message) -> None:
    """Every message kind, the download progress and results included, parses back to itself from
    the one line the formatter writes: the prefix, then compact ASCII JSON holding the state name
    of its kind and its payload."""
    line = format_message(m)
    assert line.startswith(STATE_PREFIX) and line.endswith(b"\n") and line.count(b"\n") == 1
    body = line[len(STATE_PREFIX):-1]
    assert body.isascii()
    obj = json.loads(body)
    assert list(obj) == ["state", "payload"] and obj["state"] == STATE_OF[type(m)]
    assert body == json.dumps(obj, separators=(",", ":")).encode()
    assert parse_line(line[:-1]) == m


@given(progresses, st.sets(st.sampled_from(["stages", "current", "value"])),
       st.sampled_from([int, float]))
@example(Progress(("a",), "a", 0.0), {"value"}, int)
@example(Progress(("a",), "a", 1.0), {"stages", "current", "value"}, int)
def test_loading_fields_may_be_left_out(p: Progress, keep: set[str], number: type) -> None:
    """A loading payload may leave out any of its fields: ``stages`` is then empty, ``current``
    empty, ``value`` 0; a whole-number ``value`` (0 or 1) is a number like any other."""
    value: int | float = int(p.value) if number is int and p.value in (0.0, 1.0) else p.value
    full: dict[str, Any] = {"stages": list(p.stages), "current": p.current, "value": value}
    payload = {k: v for k, v in full.items() if k in keep}
    parsed = parse_line(prefixed({"state": "loading", "payload": payload}))
    if not payload:
        assert parsed == LoadingState()
    else:
        assert parsed == LoadingState(Progress(tuple(payload.get("stages", [])),
                                               payload.get("current", ""),
                                               float(payload.get("value", 0.0))))


@given(st.sampled_from(STATES) | st.text(max_size=8), st.booleans(), json_objects)
def test_a_null_or_missing_payload_is_an_empty_one(state: str, missing: bool,
                                                   extra: dict[str, object]) -> None:
    """llama-server writes an empty payload as ``null`` (docs/CONFORMANCE.md, S5): a null or
    missing payload reads as ``{}``, and keys beside ``state`` and ``payload`` are ignored."""
    empty = parse_line(prefixed({**extra, "state": state, "payload": {}}))
    line = prefixed({**extra, "state": state} if missing else {**extra, "state": state,
                                                                "payload": None})
    parsed = parse_line(line)
    if isinstance(empty, Rejection):
        assert parsed == Rejection(empty.reason, line)
    else:
        assert parsed == empty


# -- rejections: every defect has its reason, and nothing raises ---------------------------------


@given(defective_lines)
@example((P + b'{"state":"ready","payload":{"id":"\xff"}}', "not valid UTF-8"))
@example(out_of_range("-123456789.0123456789e400"))  # the reason quotes 20 characters
@example((P + b'{"state":"loading","payload":{"value":NaN}}', "invalid JSON: NaN is not JSON"))
@example((P + b"[" * 5000 + b"]" * 5000, "invalid JSON: "))
@example((P + b"[]", "message is not a JSON object"))
@example((P + b'{"payload":{}}', "'state' is missing or not a string"))
@example((P + b'{"state":"ready","payload":[]}', "'payload' is not a JSON object"))
@example((P + b'{"state":"READY","payload":{}}', "unknown state 'READY'"))
@example((P + b'{"state":"loading","payload":{"stages":["a",1]}}',
          "state 'loading': 'stages' must be a list of strings"))
@example((P + b'{"state":"loading","payload":{"current":null}}',
          "state 'loading': 'current' must be a string"))
@example((P + b'{"state":"loading","payload":{"value":true}}',
          "state 'loading': 'value' must be a number in 0..1"))
@example((P + b'{"state":"loading","payload":{"value":"0.5"}}',
          "state 'loading': 'value' must be a number in 0..1"))
@example((P + b'{"state":"loading","payload":{"value":null}}',
          "state 'loading': 'value' must be a number in 0..1"))
@example((P + b'{"state":"loading","payload":{"value":1.0000001}}',
          "state 'loading': 'value' must be a number in 0..1"))
@example((P + b'{"state":"loading","payload":{"value":-1}}',
          "state 'loading': 'value' must be a number in 0..1"))
@example((P + b'{"state":"downloading","payload":{"result":"Download_finished"}}',
          "state 'downloading': unknown result 'Download_finished'"))
@example((P + b'{"state":"downloading","payload":{"downloaded":0,"total":0}}',
          "state 'downloading': 'url' must be a string"))
@example((P + b'{"state":"downloading","payload":{"url":"u","downloaded":-1,"total":0}}',
          "state 'downloading': 'downloaded' and 'total' must be non-negative integers"))
@example((P + b'{"state":"downloading","payload":{"url":"u","downloaded":0,"total":false}}',
          "state 'downloading': 'downloaded' and 'total' must be non-negative integers"))
def test_each_defect_is_rejected_with_its_reason(case: tuple[bytes, str]) -> None:
    """A prefixed line with one defect (not UTF-8, not JSON, a number JSON cannot carry, not an
    object, no string state, a payload that is not an object, an unknown state, a field of the
    wrong type or range) is a Rejection that keeps the line and names that defect."""
    line, reason = case
    parsed = parse_line(line)
    assert isinstance(parsed, Rejection), parsed
    assert parsed.line == line
    if reason.endswith(": "):
        assert parsed.reason.startswith(reason) and len(parsed.reason) > len(reason), parsed
    else:
        assert parsed.reason == reason


@given(st.integers(min_value=MAX_LINE + 1))
def test_an_overlong_line_is_a_rejection(length: int) -> None:
    assert parse_line(Overlong(length)) == Rejection(
        f"line of {length} bytes exceeds {MAX_LINE} bytes; dropped", b"")


@given(st.binary() | st.binary().map(lambda b: P + b) | structured_lines
       | st.text().map(lambda t: P + t.encode("utf-8", "surrogatepass")))
@example(b"caf\xe9 \xff\xfe")
def test_parse_line_never_raises(line: bytes) -> None:
    """The parser's promise: every line is a message, a LogLine or a Rejection; a line without
    the prefix is a LogLine of its text, invalid UTF-8 replaced."""
    check_invariant(line, parse_line(line))


@given(st.binary(min_size=1).filter(lambda b: b"\n" not in b), messages)
@example(b"srv  load_model: ", ReadyState({"id": "a"}))
@example(b" ", SleepingState())
@example(b"\r", ReadyState({}))  # a progress bar's carriage return before the prefix
@example(b"\xff", SleepingState())
def test_a_prefix_mid_line_is_a_log_line(before: bytes, m: Message) -> None:
    """Z11: only a line that *starts* with the prefix can be a message."""
    line = before + message_line(m)
    assume(not line.startswith(STATE_PREFIX))
    assert parse_line(line) == LogLine(line.decode("utf-8", errors="replace"))


# -- the reader: reassembly, exactly once, over-long lines, EOF ----------------------------------


@given(messages)
@settings(deadline=None)
def test_a_split_line_is_parsed_exactly_once(m: Message) -> None:
    line = format_message(m)
    for i in range(len(line) + 1):
        reader = LineReader()
        lines = reader.feed(line[:i]) + reader.feed(line[i:]) + reader.finish()
        assert parse_all(lines) == [m], i


@given(messages, cuts)
def test_the_final_unterminated_line_is_read_at_eof(m: Message, cut_at: list[int]) -> None:
    reader = LineReader()
    fed: list[bytes | Overlong] = []
    for chunk in split_at(message_line(m), cut_at):
        fed += reader.feed(chunk)
    assert fed == []
    assert parse_all(reader.finish()) == [m]
    assert reader.finish() == []


@given(messages, cuts)
def test_crlf_line_endings(m: Message, cut_at: list[int]) -> None:
    stream = message_line(m) + b"\r\n" + b"a log line\r\n" + message_line(m) + b"\r"
    assert parse_all(read_lines(split_at(stream, cut_at))) == [m, LogLine("a log line"), m]


@given(streams, cuts, st.sampled_from([MAX_LINE, 1, 8, 40, 200]))
@example(b"a" * 9 + b"\n" + b"b" * 8 + b"\n" + b"c" * 30, [3, 12, 25], 8)
@example(b"a" * 9 + b"\nok\n" + b"c" * 9, [], 8)
@settings(deadline=None)
def test_same_lines_however_the_stream_is_cut(stream: bytes, cut_at: list[int],
                                             max_line: int) -> None:
    """The reader hands out the lines of the stream, in order, each once, whatever the reads:
    whole, byte by byte, or cut anywhere; a line longer than ``max_line`` is one Overlong of its
    length, an unterminated last line comes out at EOF; and every line parses by the promise."""
    whole = read_lines([stream], max_line)
    assert whole == expected_lines(stream, max_line)
    assert read_lines([stream[i:i + 1] for i in range(len(stream))], max_line) == whole
    assert read_lines(split_at(stream, cut_at), max_line) == whole
    for line, result in zip(whole, parse_all(whole)):
        check_invariant(line, result)


@given(streams, st.randoms(use_true_random=False))
@settings(deadline=None)
def test_random_chunks_with_empty_reads(stream: bytes, rnd: object) -> None:
    chunks: list[bytes] = []
    i = 0
    while i < len(stream):
        n = rnd.randint(0, 17)  # type: ignore[attr-defined]  # 0: an empty read changes nothing
        chunks.append(stream[i:i + n])
        i += n
    assert parse_all(read_lines(chunks)) == parse_all(read_lines([stream]))


@given(messages, messages, st.lists(st.integers(min_value=0), max_size=6))
def test_z13_two_atomic_lines_any_chunking(m1: Message, m2: Message, cut_at: list[int]) -> None:
    stream = format_message(m1) + format_message(m2)
    assert parse_all(read_lines(split_at(stream, cut_at))) == [m1, m2]


# -- the core: what is not a message changes nothing ---------------------------------------------


garbage_lines = st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=80).map(lambda b: P + b),
    structured_lines,
    defective_lines.map(lambda case: case[0]).filter(lambda line: len(line) < 1000),
    messages.map(lambda m: b"[info] " + message_line(m)),  # Z11
)


def is_message_free(data: bytes) -> bool:
    return not any(isinstance(p, MESSAGE_TYPES) for p in parse_all(read_lines([data])))


def feed_garbage(core: RouterCore, data: bytes, cut_at: list[int], status: Status) -> None:
    for chunk in split_at(data, cut_at):
        out = core.handle(ChildOutput(1, chunk), 0.5)
        assert all(isinstance(c, Log) for c in out), out
        assert status_of(core) is status


@given(st.lists(garbage_lines, min_size=1, max_size=8).map(lambda ls: b"\n".join(ls) + b"\n"),
       st.lists(st.integers(min_value=0), max_size=8))
@settings(deadline=None)
def test_router_invalid_output_changes_nothing(data: bytes, cut_at: list[int]) -> None:
    """A rejection or a log line is logged and changes no model's status, before and after the
    model is loaded."""
    assume(is_message_free(data))
    core = loading_core()
    feed_garbage(core, data, cut_at, Status.LOADING)
    out = core.handle(ChildOutput(1, format_message(ReadyState(READY_INFO))), 1.0)
    assert status_of(core) is Status.LOADED
    assert Forward(1, "a", 1) in out
    assert core.models["a"].info == READY_INFO
    feed_garbage(core, data, cut_at, Status.LOADED)


@given(st.lists(st.integers(min_value=0), max_size=6))
@example([])
def test_z13_router_progress_then_ready_in_order(cut_at: list[int]) -> None:
    progress = Progress(("text_model", "mmproj"), "text_model", 0.5)
    stream = format_message(LoadingState(progress)) + format_message(ReadyState(READY_INFO))
    core = loading_core()
    out: list[Command] = []
    for chunk in split_at(stream, cut_at):
        out += core.handle(ChildOutput(1, chunk), 0.5)
    assert out == [
        Publish("a", "status_change", {"status": "loading", "progress": {
            "stages": ["text_model", "mmproj"], "current": "text_model", "value": 0.5}}),
        Publish("a", "status_change", {"status": "loaded", "info": READY_INFO}),
        Forward(1, "a", 1),
    ]
