"""Atheris entry point for the child -> router line protocol (ROUTER.md section 2).

The invariant it checks: *parse_line never raises; every input is a message, a LogLine or a
Rejection*; the lines a LineReader hands out do not depend on how the stream was cut into reads; and
every accepted message survives a trip through ``format_message``.

Run: ``python fuzz/protocol_fuzz.py -max_total_time=30``. Without atheris installed the module still
imports, and ``TestOneInput`` can be called directly (``tests/test_fuzz_entry.py`` does).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import get_args

try:
    import atheris  # type: ignore
except ImportError:  # the entry point stays importable and callable without the fuzzer
    atheris = None

if __name__ == "__main__":  # run as a script from a checkout: make ``refimpl`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Coverage instrumentation only for a fuzzing run, not when pytest imports the entry point.
_fuzzing = __name__ == "__main__" and atheris is not None
with atheris.instrument_imports() if _fuzzing else contextlib.nullcontext():
    from refimpl.core.protocol import (MAX_LINE, STATE_PREFIX, DownloadProgress,
                                       DownloadResult, LineReader, LoadingState, LogLine,
                                       Message, Overlong, Progress, ReadyState, Rejection,
                                       SleepingState, format_message, parse_line)

ALLOWED: tuple[type, ...] = (*get_args(Message), LogLine, Rejection)
HEADER = 4  # leading bytes that steer the run; the rest is the child's output

# Unless byte 1's top bit is set, bytes 0x0e..0x1f of the stream stand for these tokens (whole valid
# lines, then fragments to break them with), so that a short run with no seed corpus still reaches
# the command parser's branches: libFuzzer cannot see into json. The codes stay clear of \n and \r.
_WHOLE_LINES: list[Message] = [
    LoadingState(),
    LoadingState(Progress(("text_model", "mmproj"), "text_model", 0.5)),
    ReadyState({"id": "a", "object": "model"}),
    SleepingState(),
    DownloadProgress("https://example.invalid/a.gguf", 1, 2),
    DownloadResult(ok=False),
]
TOKENS: dict[int, bytes] = {0x0E + i: t for i, t in enumerate([
    *(format_message(m)[:-1] for m in _WHOLE_LINES),
    STATE_PREFIX,
    b'{"state":"loading","payload":{',
    b'{"state":"ready","payload":{',
    b'{"state":"downloading","payload":{',
    b'"stages":["text_model"],',
    b'"current":"text_model",',
    b'"value":',
    b'"url":"u",',
    b'"downloaded":',
    b'"total":',
    b'"result":"download_finished"',
    b"}}",
])}


def _steer(data: bytes) -> tuple[int, list[int], bytes]:
    """Split ``data`` into (max_line, read sizes, stream).

    Byte 0 with its top bit set picks a small ``max_line`` so over-long lines are reachable; unless
    byte 1 has its top bit set, :data:`TOKENS` are expanded; the header bytes, used in turn, are
    the read sizes (0 .. 31; 0 is an empty read).
    """
    header, stream = data[:HEADER], data[HEADER:]
    if not (len(header) > 1 and header[1] & 0x80):
        stream = b"".join(TOKENS.get(b, bytes((b,))) for b in stream)
    max_line = (header[0] & 0x3F) + 1 if header and header[0] & 0x80 else MAX_LINE
    sizes = [b % 32 for b in header] or [1]
    if not any(sizes):
        sizes = [1]
    return max_line, sizes, stream


def _read(stream: bytes, sizes: list[int], max_line: int) -> list[bytes | Overlong]:
    reader = LineReader(max_line)
    lines: list[bytes | Overlong] = []
    i = k = 0
    while i < len(stream):
        n = sizes[k % len(sizes)]
        k += 1
        lines += reader.feed(stream[i:i + n])
        i += n
    return lines + reader.finish()


def TestOneInput(data: bytes) -> None:
    """One input: read the stream whole and in the chosen reads, then parse every line."""
    max_line, sizes, stream = _steer(data)
    whole = _read(stream, [len(stream) or 1], max_line)
    chunked = _read(stream, sizes, max_line)
    assert chunked == whole, (chunked, whole)
    for line in whole:
        assert isinstance(line, (bytes, Overlong)), line
        if isinstance(line, bytes):
            assert b"\n" not in line and len(line) <= max_line, line
        parsed = parse_line(line)  # anything it raises is a finding
        assert isinstance(parsed, ALLOWED), parsed
        is_command = isinstance(line, bytes) and line.startswith(STATE_PREFIX)
        assert isinstance(parsed, LogLine) == (isinstance(line, bytes) and not is_command), parsed
        if isinstance(line, Overlong):
            assert isinstance(parsed, Rejection), parsed
        if not isinstance(parsed, (LogLine, Rejection)):  # accepted: the formatter writes it back
            assert parse_line(format_message(parsed)[:-1]) == parsed, (line, parsed)


def main() -> None:
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
