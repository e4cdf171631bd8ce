"""Token probabilities from one row of logits, as llama-server's ``n_probs`` reports them.

Upstream (#24796) replaced a full sort of the vocabulary with ``std::partial_sort`` of the leading
``n``; here ``numpy.argpartition`` selects the ``n`` largest logits in linear time and only those
``n`` are sorted. The softmax still normalises over the whole vocabulary: the probabilities are
those of the full distribution, only the ordering work is partial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class TokenProbability:
    id: int
    logprob: float

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


class LogitRow:
    """Softmax over one row of logits, computed once, queried for any token or the top ``n``."""

    __slots__ = ("_row", "_max", "_log_z")

    def __init__(self, logits: npt.ArrayLike) -> None:
        self._row = np.array(logits, dtype=np.float64).ravel()  # a copy: llama.cpp reuses its buffer
        self._max = float(self._row.max()) if self._row.size else -math.inf
        if math.isfinite(self._max):
            self._log_z = math.log(float(np.exp(self._row - self._max).sum()))
        else:  # every logit -inf (or a nan): there is no distribution to report
            self._log_z = math.nan

    def logprob(self, token: int) -> float:
        if not math.isfinite(self._log_z):
            return -math.inf
        return float(self._row[token] - self._max - self._log_z)

    def top(self, n: int) -> list[TokenProbability]:
        """The ``n`` most likely tokens, most likely first; equal logits: lower id first."""
        row = self._row
        n = min(n, row.size)
        if n <= 0:
            return []
        # argpartition leaves the n largest, unordered, in the last n slots: O(vocab), no sort.
        top = np.argpartition(row, row.size - n)[row.size - n:]
        ids = top[np.lexsort((top, -row[top]))]  # sort just those: logit desc, then id asc
        # On a tie at the boundary argpartition may have kept a higher id than an equal one it
        # left out; take the lowest ids among the tokens tied with the n-th logit instead.
        threshold = row[ids[-1]]
        tied_kept = int(np.count_nonzero(row[ids] == threshold))
        tied = np.flatnonzero(row == threshold)
        if tied.size > tied_kept:
            above = ids[: n - tied_kept]
            ids = np.concatenate((above, tied[:tied_kept]))  # flatnonzero is ascending
        return [TokenProbability(int(i), self.logprob(int(i))) for i in ids]


def top_n_probabilities(logits: npt.ArrayLike, n: int) -> list[TokenProbability]:
    """The ``n`` most likely tokens of ``logits`` with their log-probabilities, best first."""
    return LogitRow(logits).top(n)
