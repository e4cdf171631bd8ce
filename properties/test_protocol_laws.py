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

from refimpl.core import (ChildExited, ChildOutput, Command, DownloadAsked, Forward, ListAsked,
                          Listed, Log, ModelSpec, Publish, RemoveFiles, RouterConfig, RouterCore,
                          SendExit, Status)
from refimpl.core.protocol import (MAX_LINE, STATE_PREFIX, DownloadProgress, DownloadResult,
                                   LineReader, LoadingState, LogLine, Message, Overlong, Parsed,
                                   Progress, ReadyState, Rejection, SleepingState, StageStarted,
                                   format_message, parse_line)

from .protocol_strategies import (MESSAGE_TYPES, READY_INFO, STATE_OF, STATES, P, cuts,
                                  defective_lines, expected_lines, json_objects, json_values,
                                  loading_core,
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


@given(st.text(), st.sets(st.sampled_from(["stages", "current", "value"])), json_objects)
@example("mmproj_model", set(), {})
@example("mmproj_model", {"value"}, {})
def test_a_bare_stage_is_its_own_form(stage: str, beside: set[str],
                                      extra: dict[str, object]) -> None:
    """llama-server's child also says ``{"stage": S}`` alone, as its projector starts
    (server-context.cpp, load_model): with none of ``stages``, ``current``, ``value`` beside it
    that is a :class:`StageStarted` (other keys ignored, as everywhere); with any of them the
    payload is the progress form and ``stage`` is ignored."""
    full: dict[str, Any] = {"stages": [stage], "current": stage, "value": 0.5}
    payload = {**extra, "stage": stage, **{k: v for k, v in full.items() if k in beside}}
    parsed = parse_line(prefixed({"state": "loading", "payload": payload}))
    if beside:
        assert isinstance(parsed, LoadingState) and isinstance(parsed.progress, Progress)
    else:
        assert parsed == LoadingState(StageStarted(stage))
        line = format_message(parsed)  # and it is written back as it came
        assert json.loads(line[len(STATE_PREFIX):]) == {"state": "loading",
                                                        "payload": {"stage": stage}}
        assert parse_line(line[:-1]) == parsed


@given(json_values.filter(lambda v: not isinstance(v, str)))
@example(None)
@example(["mmproj_model"])
def test_a_stage_that_is_not_a_string_is_rejected(stage: object) -> None:
    line = prefixed({"state": "loading", "payload": {"stage": stage}})
    assert parse_line(line) == Rejection("state 'loading': 'stage' must be a string", line)


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


@given(st.lists(st.integers(min_value=0), max_size=6), st.text())
@example([], "mmproj_model")
def test_a_bare_stage_is_published_as_it_came_and_not_listed(cut_at: list[int],
                                                              stage: str) -> None:
    """As llama-server's router does (server-models.cpp, update_status): a loading payload is
    published on ``/models/sse`` as the child wrote it, ``{"stage": S}`` included, between the
    progress messages around it; ``GET /models`` shows none of it, during the load or after."""
    before = Progress(("text_model", "mmproj_model"), "text_model", 1.0)
    after = Progress(("text_model", "mmproj_model"), "mmproj_model", 0.0)
    stream = b"".join(format_message(LoadingState(p))
                      for p in (before, StageStarted(stage), after))
    core = loading_core()
    out: list[Command] = []
    for chunk in split_at(stream, cut_at):
        out += core.handle(ChildOutput(1, chunk), 0.5)
    stages = ["text_model", "mmproj_model"]
    assert out == [
        Publish("a", "status_change", {"status": "loading", "progress": {
            "stages": stages, "current": "text_model", "value": 1.0}}),
        Publish("a", "status_change", {"status": "loading", "progress": {"stage": stage}}),
        Publish("a", "status_change", {"status": "loading", "progress": {
            "stages": stages, "current": "mmproj_model", "value": 0.0}}),
    ]
    for status in ("loading", "loaded"):
        [listed] = [c for c in core.handle(ListAsked(99), 0.6) if isinstance(c, Listed)]
        [view] = listed.models
        assert view.status == status and "progress" not in view.info, view
        core.handle(ChildOutput(1, format_message(ReadyState(READY_INFO))), 0.7)


# -- messages out of place, and a child's last words ---------------------------------------------

# (status, message kind) pairs that change something: every other pair is out of place.
ACTED_ON = {(Status.LOADING, LoadingState), (Status.LOADING, ReadyState),
            (Status.LOADED, SleepingState), (Status.SLEEPING, ReadyState),
            (Status.DOWNLOADING, DownloadProgress), (Status.DOWNLOADING, DownloadResult)}


def core_in(status: Status, result: bool | None = None) -> RouterCore:
    """A core whose one child (instance 1) is in ``status``: a model child of "a", or the
    download child of "u/r:Q", which has reported ``result`` (and been asked to exit) unless
    that is None."""
    if status in (Status.DOWNLOADING, Status.DOWNLOADED):
        core = RouterCore(RouterConfig(models=(ModelSpec("a"),), models_max=1))
        core.handle(DownloadAsked(9, "u/r:Q"), 0.0)
        if result is not None:
            core.handle(ChildOutput(1, format_message(DownloadResult(result))), 0.5)
        return core
    core = loading_core()
    if status is not Status.LOADING:
        core.handle(ChildOutput(1, format_message(ReadyState(READY_INFO))), 0.5)
    if status is Status.SLEEPING:
        core.handle(ChildOutput(1, format_message(SleepingState())), 0.6)
    return core


def the_status(core: RouterCore) -> Status:
    return core.models["u/r:Q" if "u/r:Q" in core.models else "a"].status


@given(message=messages, status=st.sampled_from([Status.LOADING, Status.LOADED, Status.SLEEPING,
                                                 Status.DOWNLOADING]),
       result=st.sampled_from([None, None, True, False]))
@example(message=DownloadProgress("u", 1, 2), status=Status.DOWNLOADING, result=False)
@example(message=DownloadResult(True), status=Status.DOWNLOADING, result=True)
@example(message=LoadingState(None), status=Status.LOADED, result=None)
@example(message=SleepingState(), status=Status.SLEEPING, result=None)
@example(message=ReadyState({}), status=Status.DOWNLOADING, result=None)
@example(message=DownloadResult(False), status=Status.LOADING, result=None)
def test_a_message_out_of_place_is_logged_once_and_changes_nothing(message: Message,
                                                                   status: Status,
                                                                   result: bool | None) -> None:
    """A well-formed message that the child's status does not allow ('loading' from a ready or
    sleeping child, 'sleeping' from a loading one, 'ready' from a ready one, a download message
    from a model child, a model message from a download child, anything from a download child
    that has reported its result) is logged once under that child's id and changes nothing
    (ROUTER.md section 2: logged and ignored), in a log line that says it was ignored."""
    if status is Status.DOWNLOADING and result is not None:
        status = Status.DOWNLOADED if result else Status.DOWNLOADING
    else:
        result = None
        assume((status, type(message)) not in ACTED_ON)
    core = core_in(status, result)
    out = core.handle(ChildOutput(1, format_message(message)), 1.0)
    assert len(out) == 1 and isinstance(out[0], Log), out
    assert out[0].instance == 1 and out[0].text.startswith("ignored "), out
    assert the_status(core) is status


@given(line=st.one_of(messages.map(message_line),
                      garbage_lines.filter(lambda b: bool(b) and b"\n" not in b)),
       status=st.sampled_from([Status.LOADING, Status.LOADED, Status.DOWNLOADING]),
       code=st.sampled_from([0, 1, 137]))
def test_a_last_line_without_newline_is_read_at_exit(line: bytes, status: Status,
                                                     code: int) -> None:
    """A child's last line with no newline is read when it exits: from a model child, a log
    line is logged as it is and a message only logged (an exited child is not ready, loading or
    asleep any more), and the model ends UNLOADED with the exit code; from a download child, a
    log line or a defect is logged once."""
    core = core_in(status)
    core.handle(ChildOutput(1, line), 1.0)
    out = core.handle(ChildExited(1, code), 2.0)
    logs = [c for c in out if isinstance(c, Log)]
    parsed = parse_line(line)
    if status is not Status.DOWNLOADING:
        assert len(logs) == 1 and logs[0].instance == 1 and isinstance(logs[0].text, str), out
        if isinstance(parsed, LogLine):
            assert logs[0].text == parsed.text
        else:
            assert logs[0].text.startswith("ignored "), logs
        assert the_status(core) is Status.UNLOADED and core.models["a"].exit_code == code
        changes = [c for c in out if isinstance(c, Publish) and c.event == "status_change"]
        assert changes and changes[-1].data["status"] == "unloaded", out
        assert changes[-1].data.get("exit_code") == code, out
    elif isinstance(parsed, (LogLine, Rejection)):
        assert len(logs) == 1 and logs[0].instance == 1 and isinstance(logs[0].text, str), out


# -- what a download child's report becomes on /models/sse ----------------------------------------

URLS = st.sampled_from(["http://hub/u/r/a.gguf", "http://hub/u/r/b.gguf"])


@given(progress=st.lists(st.builds(DownloadProgress, URLS, st.integers(0, 9), st.integers(0, 9)),
                         max_size=4),
       result=st.sampled_from([None, True, False]), code=st.sampled_from([0, 1, 137]))
def test_a_download_is_published_as_its_child_reports_it(progress: list[DownloadProgress],
                                                         result: bool | None, code: int) -> None:
    """ROUTER.md sections 2 and 4: each progress line is published once as
    ``download_progress`` with every file's progress so far (which ``GET /models`` shows until
    the child exits); the result once, as ``download_finished`` (the model is DOWNLOADED, then
    an ordinary UNLOADED model when its child exits) or ``download_failed``; a child that exits
    without a result is a failed download with its exit code. A download that did not finish
    leaves nothing: its files are removed and the model is forgotten."""
    name = "u/r:Q"
    core = core_in(Status.DOWNLOADING)
    so_far: dict[str, dict[str, int]] = {}
    for i, msg in enumerate(progress):
        out = core.handle(ChildOutput(1, format_message(msg)), 0.1 * i)
        so_far[msg.url] = {"done": msg.downloaded, "total": msg.total}
        assert out == [Publish(name, "download_progress", {"progress": so_far})], out
        assert core.models[name].info["progress"] == so_far
    if result is not None:
        out = core.handle(ChildOutput(1, format_message(DownloadResult(result))), 1.0)
        events = [c.event for c in out if isinstance(c, Publish)]
        assert events == (["status_change", "download_finished"] if result
                          else ["download_failed"]), out
        assert all(c.data == {"status": "downloaded"} if c.event == "status_change" else
                   c.data == {} for c in out if isinstance(c, Publish)), out
        assert SendExit(1) in out  # its work is done
    out = core.handle(ChildExited(1, code), 2.0)
    published = [(c.event, c.data) for c in out if isinstance(c, Publish)]
    if result:
        assert published == [("status_change", {"status": "unloaded"})], out
        assert "progress" not in core.models[name].info
        assert core.models[name].status is Status.UNLOADED
        return
    failed = [] if result is False else [("download_failed", {"exit_code": code})]
    assert published == [*failed, ("status_change", {"status": "unloaded", "exit_code": code}),
                         ("model_remove", {})], out
    assert RemoveFiles(name) in out and name not in core.models
