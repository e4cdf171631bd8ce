"""Runs the atheris entry point (``fuzz/protocol_fuzz.py``) under hypothesis, so pytest exercises
it whether or not atheris is installed."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fuzz.protocol_fuzz import TOKENS, TestOneInput
from refimpl.core.protocol import STATE_PREFIX, ReadyState, format_message

READY = format_message(ReadyState({"id": "a"}))

inputs = st.binary(max_size=512) | st.tuples(
    st.binary(min_size=4, max_size=4),
    st.lists(st.sampled_from([READY, STATE_PREFIX, b"\n", b"\r\n", b"log " + READY])
             | st.binary(max_size=40), max_size=8).map(b"".join),
).map(b"".join)
# Byte 1's top bit clear: the stream's bytes 0x0e..0x1f expand to protocol tokens.
token_inputs = st.tuples(
    st.binary(min_size=1, max_size=1), st.integers(0x00, 0x7F).map(lambda b: bytes((b,))),
    st.binary(min_size=2, max_size=2),
    st.lists(st.sampled_from(sorted(TOKENS)).map(lambda b: bytes((b,))) | st.binary(max_size=4),
             max_size=24).map(b"".join),
).map(b"".join)


@given(inputs | token_inputs)
@settings(max_examples=300, deadline=None)
@example(b"")
@example(b"\x00\x00\x00\x00" + READY)  # all read sizes 0: the entry point must still progress
@example(b"\x81\x01\x02\x03" + READY + READY[:-1])  # max_line 2: everything over-long
@example(b"\x05\x00\x03\x07\x0f\n\x14\x15\x18\x19\x1a0.5\x1f\r\n"
         b"\x14\x17\x1b\x1c1,\x1d2\x1f\n\x14\x15\x1a\"x\"\x1f")  # token mode
@example(b"\x01\x01\x01\x01" + STATE_PREFIX + b'{"state":"nope"}\n' + b"[" * 5000)
def test_fuzz_entry_point(data: bytes) -> None:
    TestOneInput(data)
