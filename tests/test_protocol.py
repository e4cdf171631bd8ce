"""Example tests of the child -> router line protocol (ROUTER.md section 2) and of how the core
uses it. The protocol's laws, stated for every input (round trip, rejection reasons, reassembly
however the output is cut, the fuzz invariant: *parse_line never raises; every input is a message,
a LogLine or a Rejection*), are property tests in ``properties/test_protocol_laws.py``.

Bug zoo entries pinned here: Z11 (a prefix mid-line is not a command), Z12 (a line split across
reads is parsed once; an over-long line is dropped; the last line is read at EOF), Z14 (an unknown
state is logged and ignored).
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from properties.mutants import mutated
from properties.protocol_strategies import (READY_INFO, loading_core, parse_all, read_lines,
                                            status_of)
from refimpl.core import ChildExited, ChildOutput, Command, Forward, Log, Status
from refimpl.core.protocol import (MAX_LINE, STATE_PREFIX, LineReader, LogLine, Overlong, Parsed,
                                   ReadyState, Rejection, SleepingState, format_exit,
                                   format_message, parse_line)


def test_format_exit() -> None:
    assert format_exit() == b"cmd_router_to_child:exit\n"


# -- Z11: only a line that starts with the prefix is a command -----------------------------------


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


# -- line endings ----------------------------------------------------------------------------------


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
    core = loading_core()
    with mutated("Z14"), pytest.raises(RuntimeError, match="unknown state"):
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
