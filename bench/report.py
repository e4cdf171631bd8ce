"""Writes a generated section into a document (docs/BENCHMARKS.md by default), replacing the
section's previous run: the benchmarks, the bug zoo and the differential runner all write their
results this way."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def write_section(mark: str, body: str, doc: Path = DOC, end: str | None = None) -> Path:
    """Put ``body`` between the lines ``mark`` and ``end`` (``mark`` again by default), in place
    of what was there, or at the end of ``doc`` when the two are not both in it."""
    end = mark if end is None else end
    section = f"{mark}\n{body}\n{end}"
    text = doc.read_text() if doc.exists() else f"# {doc.stem.capitalize()}\n"
    head, found, rest = text.partition(mark)
    if found and end in rest:
        text = head + section + rest.partition(end)[2]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(text)
    return doc
