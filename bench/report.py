"""Writes a benchmark's section into docs/BENCHMARKS.md, replacing its previous run."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def write_section(mark: str, body: str) -> Path:
    """Put ``body`` between two ``mark`` comments, in place of what was there, or at the end."""
    section = f"{mark}\n{body}\n{mark}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if mark in text:
        head, _, rest = text.partition(mark)
        text = head + section + rest.partition(mark)[2]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    return DOC
