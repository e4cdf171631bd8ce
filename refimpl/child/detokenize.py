"""Detokenizing in linear time, for llama-cpp-python's streamed completions.

llama-cpp-python's ``_create_completion`` detokenizes the whole completion again on every token it
streams, and its ``LlamaModel.detokenize`` joins the pieces with ``bytes +=`` (a copy of all so
far per piece): cubic in the completion's length (250 tokens took 4 s, 500 took 21 s on the tiny
models). The model's ``detokenize`` is replaced here by one with the same output that keeps each
token's piece and the last text it made: a call that extends the previous call's tokens (each
streamed token does) costs the new tokens alone, plus a C-speed check of the old ones.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_low

_PIECE = 32  # llama-cpp-python's buffer, kept: same bytes out for every token


class LinearDetokenizer:
    """``LlamaModel.detokenize`` (same arguments, same bytes), remembering what it made."""

    def __init__(self, model: Any) -> None:
        self._vocab = model.vocab
        self._bos = model.token_bos()
        self._buffer = (ctypes.c_char * _PIECE)()
        self._pieces: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})
        # the tokens of the last call and their joined pieces, by ``special``; one tuple each,
        # replaced whole, so a call on another thread (/detokenize) reads a consistent pair
        self._last: list[tuple[list[int], bytes]] = [([], b""), ([], b"")]

    def _piece(self, token: int, special: bool) -> bytes:
        pieces = self._pieces[special]
        piece = pieces.get(token)
        if piece is None:
            n = llama_low.llama_token_to_piece(self._vocab, llama_low.llama_token(token),
                                               self._buffer, _PIECE, 0, special)
            assert n <= _PIECE
            piece = pieces[token] = self._buffer.raw[:n]
        return piece

    def __call__(self, tokens: list[int], special: bool = False) -> bytes:
        tokens = list(tokens)
        last_tokens, last_raw = self._last[special]
        start = len(last_tokens)
        if start and start <= len(tokens) and tokens[:start] == last_tokens:
            raw = last_raw + b"".join(self._piece(t, special) for t in tokens[start:])
        else:
            raw = b"".join(self._piece(t, special) for t in tokens)
        self._last[special] = (tokens, raw)
        # as llama-cpp-python: a leading space after a BOS is dropped
        return raw[1:] if tokens and tokens[0] == self._bos and raw[:1] == b" " else raw


def linear(llama: llama_cpp.Llama) -> llama_cpp.Llama:
    """``llama``, its detokenizing linear in new tokens; returned for chaining."""
    llama._model.detokenize = LinearDetokenizer(llama._model)  # type: ignore[method-assign]
    return llama
