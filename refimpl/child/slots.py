"""``GET /slots``: llama-server's slot list, from the last task this child served.

This child serves one request at a time (``OneAtATime``), so slot 0 runs every task; the other
slots ``--parallel`` asks for are listed, idle, as llama-server lists slots that never ran one.
"""

from __future__ import annotations

from typing import Any

from refimpl.child.timings import Generation


class Slots:
    def __init__(self) -> None:
        self._tasks = 0
        self._last: dict[str, Any] | None = None

    def served(self, record: Generation | None, params: dict[str, Any], text: str) -> None:
        """A task has finished: ``record`` is its generation, ``params`` the settings in effect
        (``/props``'s short form), ``text`` what it generated."""
        n_predict = params.get("n_predict", -1)
        decoded = record.predicted if record is not None else 0
        self._last = {
            "id_task": self._tasks,
            "n_prompt_tokens": len(record.prompt) if record is not None else 0,
            "n_prompt_tokens_processed": record.evaluated if record is not None else 0,
            "n_prompt_tokens_cache": record.cached if record is not None else 0,
            "params": params,
            "next_token": [{"has_next_token": False, "has_new_line": "\n" in text,
                            "n_remain": max(n_predict - decoded, 0) if n_predict >= 0 else -1,
                            "n_decoded": decoded}],
        }
        self._tasks += 1

    def describe(self, total: int, n_ctx: int, processing: bool) -> list[dict[str, Any]]:
        out = []
        for i in range(total):
            slot: dict[str, Any] = {"id": i, "n_ctx": n_ctx, "speculative": False,
                                    "is_processing": processing and i == 0}
            if i == 0 and self._last is not None:
                slot.update(self._last)
            out.append(slot)
        return out
