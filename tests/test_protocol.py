"""Tests of the child -> router line protocol (ROUTER.md section 2) and of how the core uses it.

The fuzz invariant, as the parser's docstring states it and as the property tests here check it:
*parse_line never raises; every input is a message, a LogLine or a Rejection.* A rejection never
changes a model's status.

Bug zoo entries pinned here: Z11 (a prefix mid-line is not a command), Z12 (a line split across
reads is parsed once; an over-long line is dropped; the last line is read at EOF), Z13 (lines
written atomically come out whole and in order however the pipe splits them), Z14 (an unknown
state is logged and ignored).
"""

from __future__ import annotations

import json
import tracemalloc
from typing import Any, get_args

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from refimpl.core import (ChildExited, ChildOutput, Command, Forward, Log, ModelSpec, Publish,
                          RequestArrived, RouterConfig, RouterCore, Spawn, Status)
from refimpl.core.protocol import (MAX_LINE, STATE_PREFIX, DownloadProgress, DownloadResult,
                                   LineReader, LoadingState, LogLine, Message, Overlong, Parsed,
                                   Progress, ReadyState, Rejection, SleepingState, format_exit,
                                   format_message, parse_line)

MESSAGE_TYPES: tuple[type, ...] = get_args(Message)
PARSED_TYPES: tuple[type, ...] = (*MESSAGE_TYPES, LogLine, Rejection)

# -- strategies ----------------------------------------------------------------------------------

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


# -- helpers -------------------------------------------------------------------------------------


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length + 1, so any ints will do)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def read_lines(chunks: list[bytes], max_line: int = MAX_LINE) -> list[bytes | Overlong]:
    """Everything a fresh reader hands out for ``chunks``, EOF included."""
    reader = LineReader(max_line)
    lines: list[bytes | Overlong] = []
    for chunk in chunks:
        lines += reader.feed(chunk)
    return lines + reader.finish()


def expected_lines(stream: bytes, max_line: int = MAX_LINE) -> list[bytes | Overlong]:
    """An independent oracle for the reader: split on ``\\n``, a last unterminated line counts,
    a line longer than ``max_line`` (its ``\\r`` counted) is Overlong, one trailing ``\\r`` goes."""
    pieces = stream.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return [Overlong(len(p)) if len(p) > max_line else p.removesuffix(b"\r") for p in pieces]


def parse_all(lines: list[bytes | Overlong]) -> list[Parsed]:
    return [parse_line(line) for line in lines]


def check_invariant(line: bytes | Overlong, parsed: Parsed) -> None:
    """The fuzz invariant, plus: only a line that starts with the prefix may be a non-log, and an
    accepted message survives a trip through the formatter."""
    assert isinstance(parsed, PARSED_TYPES), parsed
    if isinstance(line, Overlong):
        assert isinstance(parsed, Rejection) and parsed.reason
    elif not line.startswith(STATE_PREFIX):
        assert isinstance(parsed, LogLine)
    else:
        assert not isinstance(parsed, LogLine)
        if isinstance(parsed, Rejection):
            assert parsed.reason and parsed.line == line
        else:
            assert parse_line(message_line(parsed)) == parsed


# -- round trip ----------------------------------------------------------------------------------


@given(messages)
@example(LoadingState())
@example(LoadingState(Progress((), "", 0.0)))
@example(ReadyState({}))
@example(DownloadProgress("", 0, 0))
def test_round_trip(m: Message) -> None:
    line = format_message(m)
    assert line.startswith(STATE_PREFIX) and line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_line(line[:-1]) == m


def test_format_exit() -> None:
    assert format_exit() == b"cmd_router_to_child:exit\n"


# -- Z11: only a line that starts with the prefix is a command -----------------------------------


@given(st.binary(min_size=1).filter(lambda b: b"\n" not in b), messages)
@example(b"srv  load_model: ", ReadyState({"id": "a"}))
@example(b" ", SleepingState())
@example(b"\r", ReadyState({}))  # a progress bar's carriage return before the prefix
@example(b"\xff", SleepingState())
def test_z11_prefix_mid_line_is_a_log_line(before: bytes, m: Message) -> None:
    line = before + message_line(m)
    assume(not line.startswith(STATE_PREFIX))
    assert parse_line(line) == LogLine(line.decode("utf-8", errors="replace"))


@pytest.mark.parametrize("line", [
    b"cmd_child_to_router:state",  # the prefix without its colon
    b"CMD_CHILD_TO_ROUTER:STATE:" + b'{"state":"sleeping","payload":{}}',
    b"cmd_router_to_child:exit",
    b"",
])
def test_z11_near_misses_are_log_lines(line: bytes) -> None:
    assert isinstance(parse_line(line), LogLine)


def test_z11_router_prefix_mid_line_is_not_ready() -> None:
    core = loading_core()
    out = core.handle(ChildOutput(1, b"log: " + format_message(ReadyState({"id": "a"}))), 0.5)
    assert all(isinstance(c, Log) for c in out), out
    assert status_of(core) is Status.LOADING


# -- Z12: reassembly, over-long lines, EOF -------------------------------------------------------


@given(messages)
@settings(deadline=None)
def test_z12_split_line_is_parsed_exactly_once(m: Message) -> None:
    line = format_message(m)
    for i in range(len(line) + 1):
        reader = LineReader()
        lines = reader.feed(line[:i]) + reader.feed(line[i:]) + reader.finish()
        assert parse_all(lines) == [m], i


def test_z12_info_longer_than_a_read_buffer() -> None:
    m = ReadyState({"id": "a", "meta": {"blob": "x" * 300_000}})
    line = format_message(m)
    for size in (1, 4096, 65536):
        if size == 1:
            chunks = [line[:70_000], *(line[i:i + 1] for i in range(70_000, 70_100)),
                      line[70_100:]]
        else:
            chunks = [line[i:i + size] for i in range(0, len(line), size)]
        assert parse_all(read_lines(chunks)) == [m]


def padded_ready_line(length: int) -> bytes:
    """A valid ``ready`` line of exactly ``length`` bytes (JSON whitespace pads it)."""
    head = STATE_PREFIX + b'{"state":"ready","payload":{"id":"a"}'
    return head + b" " * (length - len(head) - 1) + b"}"


@pytest.mark.parametrize("chunk", [MAX_LINE + 100, 65536, 4093])
def test_z12_overlong_line_is_dropped_and_the_next_one_parses(chunk: int) -> None:
    fits, too_long = padded_ready_line(MAX_LINE), padded_ready_line(MAX_LINE + 1)
    after = format_message(SleepingState())
    stream = fits + b"\n" + too_long + b"\n" + after
    lines = read_lines([stream[i:i + chunk] for i in range(0, len(stream), chunk)])
    assert lines == [fits, Overlong(MAX_LINE + 1), after[:-1]]
    parsed = parse_all(lines)
    assert parsed[0] == ReadyState({"id": "a"})
    assert isinstance(parsed[1], Rejection) and "exceeds" in parsed[1].reason
    assert parsed[2] == SleepingState()


def test_z12_overlong_line_is_not_buffered() -> None:
    """Dropping is what stops a child that never writes a newline from filling our memory."""
    reader = LineReader()
    chunk = b"x" * 65536
    tracemalloc.start()
    try:
        for _ in range(8 * MAX_LINE // len(chunk)):
            assert reader.feed(chunk) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_LINE
    assert reader.feed(b"\nok\n") == [Overlong(8 * MAX_LINE), b"ok"]


def test_z12_overlong_unterminated_line_at_eof() -> None:
    reader = LineReader()
    assert reader.feed(b"x" * (MAX_LINE // 2)) == []
    assert reader.feed(b"x" * (MAX_LINE // 2 + 1)) == []
    assert reader.feed(b"y" * 10) == []
    assert reader.finish() == [Overlong(MAX_LINE + 11)]
    assert reader.finish() == []


@given(messages, st.lists(st.integers(min_value=0)))
def test_z12_final_unterminated_line_is_read_at_eof(m: Message, cuts: list[int]) -> None:
    reader = LineReader()
    fed: list[bytes | Overlong] = []
    for chunk in split_at(message_line(m), cuts):
        fed += reader.feed(chunk)
    assert fed == []
    assert parse_all(reader.finish()) == [m]
    assert reader.finish() == []


def test_z12_finish_on_an_empty_reader_gives_nothing() -> None:
    reader = LineReader()
    assert reader.finish() == []
    assert reader.feed(b"a\n") == [b"a"]
    assert reader.finish() == []


def test_z12_router_reads_the_last_line_at_exit() -> None:
    core = loading_core()
    assert core.handle(ChildOutput(1, b"last words"), 0.5) == []
    out = core.handle(ChildExited(1, 1), 1.0)
    assert Log(1, "last words") in out
    assert status_of(core) is Status.UNLOADED


def test_z12_router_ignores_an_overlong_ready_line() -> None:
    core = loading_core()
    line = padded_ready_line(MAX_LINE + 1) + b"\n"
    out: list[Command] = []
    for i in range(0, len(line), 65536):
        out += core.handle(ChildOutput(1, line[i:i + 65536]), 0.5)
    assert len(out) == 1 and isinstance(out[0], Log) and "exceeds" in out[0].text
    assert status_of(core) is Status.LOADING


# -- CRLF ----------------------------------------------------------------------------------------


@given(messages, st.lists(st.integers(min_value=0)))
def test_crlf_line_endings(m: Message, cuts: list[int]) -> None:
    stream = message_line(m) + b"\r\n" + b"a log line\r\n" + message_line(m) + b"\r"
    assert parse_all(read_lines(split_at(stream, cuts))) == [m, LogLine("a log line"), m]


@pytest.mark.parametrize("stream, lines", [
    (b"a\r\r\n", [b"a\r"]),  # only one \r goes
    (b"\r\n", [b""]),
    (b"50%\r100%\n", [b"50%\r100%"]),  # a bare \r does not end a line
    (b"a\n\nb", [b"a", b"", b"b"]),
])
def test_line_endings(stream: bytes, lines: list[bytes]) -> None:
    assert read_lines([stream]) == lines
    assert read_lines([stream[i:i + 1] for i in range(len(stream))]) == lines


# -- rejections, never exceptions (Z14 among them) -----------------------------------------------

P = STATE_PREFIX
HUGE_INT = b"1" + b"0" * 400  # an integer beyond float range, well under Python's digit limit

REJECTED: list[Any] = [
    pytest.param(P, "invalid JSON", id="empty-body"),
    pytest.param(P + b"{", "invalid JSON", id="truncated"),
    pytest.param(P + b"{'state': 'ready'}", "invalid JSON", id="single-quotes"),
    pytest.param(P + b'{"state":"ready"} x', "invalid JSON", id="trailing-garbage"),
    pytest.param(P + b'{"state":"exploded","payload":{}}', "unknown state", id="z14-unknown"),
    pytest.param(P + b'{"state":"READY","payload":{}}', "unknown state", id="z14-case"),
    pytest.param(P + b'{"state":"","payload":{}}', "unknown state", id="z14-empty"),
    pytest.param(P + b'{"state":1,"payload":{}}', "'state'", id="state-int"),
    pytest.param(P + b'{"state":null}', "'state'", id="state-null"),
    pytest.param(P + b'{"payload":{}}', "'state'", id="state-missing"),
    pytest.param(P + b'{"state":"ready","payload":[]}', "'payload'", id="payload-list"),
    pytest.param(P + b'{"state":"ready","payload":"x"}', "'payload'", id="payload-str"),
    pytest.param(P + b'{"state":"loading","payload":{"stages":"text_model"}}', "'stages'",
                 id="stages-str"),
    pytest.param(P + b'{"state":"loading","payload":{"stages":[1]}}', "'stages'", id="stages-int"),
    pytest.param(P + b'{"state":"loading","payload":{"current":1}}', "'current'", id="current"),
    pytest.param(P + b'{"state":"loading","payload":{"value":"0.5"}}', "'value'", id="value-str"),
    pytest.param(P + b'{"state":"loading","payload":{"value":true}}', "'value'", id="value-bool"),
    pytest.param(P + b'{"state":"loading","payload":{"value":1.5}}', "'value'", id="value-big"),
    pytest.param(P + b'{"state":"loading","payload":{"value":-0.1}}', "'value'", id="value-neg"),
    pytest.param(P + b'{"state":"loading","payload":{"value":1e999}}', "out of range", id="value-inf"),
    pytest.param(P + b'{"state":"loading","payload":{"value":' + HUGE_INT + b"}}", "'value'",
                 id="value-huge-int"),
    pytest.param(P + b'{"state":"downloading","payload":{}}', "'url'", id="url-missing"),
    pytest.param(P + b'{"state":"downloading","payload":{"url":"u","downloaded":-1,"total":2}}',
                 "non-negative", id="downloaded-neg"),
    pytest.param(P + b'{"state":"downloading","payload":{"url":"u","downloaded":1.0,"total":2}}',
                 "non-negative", id="downloaded-float"),
    pytest.param(P + b'{"state":"downloading","payload":{"url":"u","downloaded":1,"total":true}}',
                 "non-negative", id="total-bool"),
    pytest.param(P + b'{"state":"downloading","payload":{"result":"maybe"}}', "unknown result",
                 id="result"),
    pytest.param(P + b'{"state":"ready","payload":{"id":"\xff"}}', "UTF-8", id="non-utf8"),
    pytest.param(P + b'\xef\xbb\xbf{"state":"ready","payload":{}}', "invalid JSON", id="bom"),
    pytest.param(P + b'{"state":"loading","payload":{"value":NaN}}', "invalid JSON", id="nan"),
    pytest.param(P + b'{"state":"ready","payload":{"x":Infinity}}', "invalid JSON", id="inf"),
    pytest.param(P + b'{"state":"ready","payload":{"x":-Infinity}}', "invalid JSON", id="-inf"),
    pytest.param(P + b'{"state":"ready","payload":{"x":1e999}}', "out of range",
                 id="inf-by-overflow"),
    pytest.param(P + b"[]", "not a JSON object", id="list"),
    pytest.param(P + b'"ready"', "not a JSON object", id="string"),
    pytest.param(P + b"null", "not a JSON object", id="null"),
    pytest.param(P + b"1", "not a JSON object", id="number"),
    pytest.param(P + b"[" * 100_000 + b"]" * 100_000, "invalid JSON", id="deep-list"),
    pytest.param(P + b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "invalid JSON", id="deep-dict"),
    pytest.param(P + b'{"state":"ready","payload":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                 "invalid JSON", id="deep-payload"),
]


@pytest.mark.parametrize("line, reason", REJECTED)
def test_rejected_lines(line: bytes, reason: str) -> None:
    parsed = parse_line(line)
    assert isinstance(parsed, Rejection), parsed
    assert reason in parsed.reason and parsed.line == line


@pytest.mark.parametrize("line, reason", REJECTED)
def test_rejected_lines_change_no_status(line: bytes, reason: str) -> None:
    core = loading_core()
    out = core.handle(ChildOutput(1, line + b"\n"), 0.5)
    assert out == [Log(1, f"ignored child message: {parse_line(line).reason}")]  # type: ignore
    assert status_of(core) is Status.LOADING


def test_z14_unknown_state_is_logged_and_ignored() -> None:
    line = P + b'{"state":"hibernating","payload":{"why":"tired"}}'
    assert parse_line(line) == Rejection("unknown state 'hibernating'", line)
    core = loading_core()
    out = core.handle(ChildOutput(1, line + b"\n"), 0.5)
    assert out == [Log(1, "ignored child message: unknown state 'hibernating'")]
    assert status_of(core) is Status.LOADING
    out = core.handle(ChildOutput(1, format_message(ReadyState({"id": "a"}))), 1.0)
    assert status_of(core) is Status.LOADED and Forward(1, "a", 1) in out


def test_z14_mutant_aborts_the_router() -> None:
    core = loading_core(frozenset({"Z14"}))
    with pytest.raises(RuntimeError, match="unknown state"):
        core.handle(ChildOutput(1, P + b'{"state":"hibernating","payload":{}}\n'), 0.5)


@pytest.mark.parametrize("line, parsed", [
    (P + b'{"state":"sleeping","payload":null}', SleepingState()),
    (P + b'{"state":"ready","payload":null}', ReadyState({})),
    (P + b'{"state":"ready"}', ReadyState({})),
])
def test_a_null_or_missing_payload_is_an_empty_one(line: bytes, parsed: Parsed) -> None:
    """llama-server's child writes the empty payloads of ``sleeping`` and of ``ready`` on wake
    as ``null`` (``callback_state(..., {})`` in C++): docs/CONFORMANCE.md, S5."""
    assert parse_line(line) == parsed


def test_non_utf8_log_line_is_a_log_line() -> None:
    assert parse_line(b"caf\xe9 \xff\xfe") == LogLine("caf\ufffd \ufffd\ufffd")


def test_overlong_marker_is_a_rejection() -> None:
    parsed = parse_line(Overlong(MAX_LINE + 5))
    assert isinstance(parsed, Rejection) and str(MAX_LINE + 5) in parsed.reason


# -- the fuzz invariant --------------------------------------------------------------------------


@given(st.binary() | st.binary().map(lambda b: P + b) | structured_lines
       | st.text().map(lambda t: P + t.encode("utf-8", "surrogatepass")))
def test_parse_line_never_raises(line: bytes) -> None:
    check_invariant(line, parse_line(line))


stream_parts = st.one_of(
    messages.map(format_message),
    messages.map(lambda m: message_line(m) + b"\r\n"),
    structured_lines.map(lambda line: line + b"\n"),
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: P + b),
    st.sampled_from([b"\n", b"\r\n", b"\r", P, b"log " + P]),
)
streams = st.lists(stream_parts, max_size=10).map(b"".join)


@given(streams, st.lists(st.integers(min_value=0)),
       st.sampled_from([MAX_LINE, 1, 8, 40, 200]))
@settings(deadline=None)
def test_fuzz_invariant_same_results_however_the_stream_is_cut(
        stream: bytes, cuts: list[int], max_line: int) -> None:
    """parse_line never raises; every input is a message, a LogLine or a Rejection; and the
    parsed results do not depend on how the stream was cut into reads."""
    whole = read_lines([stream], max_line)
    assert whole == expected_lines(stream, max_line)
    assert read_lines([stream[i:i + 1] for i in range(len(stream))], max_line) == whole
    assert read_lines(split_at(stream, cuts), max_line) == whole
    parsed = parse_all(whole)
    for line, result in zip(whole, parsed):
        check_invariant(line, result)


@given(streams, st.randoms(use_true_random=False))
@settings(deadline=None)
def test_fuzz_invariant_random_chunks_with_empty_reads(stream: bytes, rnd: Any) -> None:
    chunks: list[bytes] = []
    i = 0
    while i < len(stream):
        n = rnd.randint(0, 17)  # 0: an empty read, which must change nothing
        chunks.append(stream[i:i + n])
        i += n
    assert parse_all(read_lines(chunks)) == parse_all(read_lines([stream]))


# -- Z13: atomic lines stay whole and in order ---------------------------------------------------


@given(messages, messages, st.lists(st.integers(min_value=0), max_size=6))
def test_z13_two_atomic_lines_any_chunking(m1: Message, m2: Message, cuts: list[int]) -> None:
    stream = format_message(m1) + format_message(m2)
    assert parse_all(read_lines(split_at(stream, cuts))) == [m1, m2]


# -- the router core ----------------------------------------------------------------------------

READY_INFO = {"id": "a", "object": "model"}


def loading_core(mutants: frozenset[str] = frozenset()) -> RouterCore:
    """A core whose model "a" is LOADING for request 1 in child instance 1."""
    core = RouterCore(RouterConfig(models=(ModelSpec("a"),), models_max=1, mutants=mutants))
    out = core.handle(RequestArrived(1, "a"), 0.0)
    assert Spawn(1, "a") in out
    assert status_of(core) is Status.LOADING
    return core


def status_of(core: RouterCore) -> Status:
    return core.models["a"].status


def is_message_free(data: bytes) -> bool:
    return not any(isinstance(p, MESSAGE_TYPES) for p in parse_all(read_lines([data])))


garbage_lines = st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=80).map(lambda b: P + b),
    structured_lines,
    st.sampled_from([p.values[0] for p in REJECTED if len(p.values[0]) < 1000 and not p.marks]),
    messages.map(lambda m: b"[info] " + message_line(m)),  # Z11
)


def feed_garbage(core: RouterCore, data: bytes, cuts: list[int], status: Status) -> None:
    for chunk in split_at(data, cuts):
        out = core.handle(ChildOutput(1, chunk), 0.5)
        assert all(isinstance(c, Log) for c in out), out
        assert status_of(core) is status


@given(st.lists(garbage_lines, min_size=1, max_size=8).map(lambda ls: b"\n".join(ls) + b"\n"),
       st.lists(st.integers(min_value=0), max_size=8))
@settings(deadline=None)
def test_router_invalid_output_changes_nothing(data: bytes, cuts: list[int]) -> None:
    assume(is_message_free(data))
    core = loading_core()
    feed_garbage(core, data, cuts, Status.LOADING)
    out = core.handle(ChildOutput(1, format_message(ReadyState(READY_INFO))), 1.0)
    assert status_of(core) is Status.LOADED
    assert Forward(1, "a", 1) in out
    assert core.models["a"].info == READY_INFO
    feed_garbage(core, data, cuts, Status.LOADED)


@given(st.lists(st.integers(min_value=0), max_size=6))
@example([])
def test_z13_router_progress_then_ready_in_order(cuts: list[int]) -> None:
    progress = Progress(("text_model", "mmproj"), "text_model", 0.5)
    stream = format_message(LoadingState(progress)) + format_message(ReadyState(READY_INFO))
    core = loading_core()
    out: list[Command] = []
    for chunk in split_at(stream, cuts):
        out += core.handle(ChildOutput(1, chunk), 0.5)
    assert out == [
        Publish("a", "status_change", {"status": "loading", "progress": {
            "stages": ["text_model", "mmproj"], "current": "text_model", "value": 0.5}}),
        Publish("a", "status_change", {"status": "loaded", "info": READY_INFO}),
        Forward(1, "a", 1),
    ]
