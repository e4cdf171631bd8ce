"""``--trace FILE`` (refimpl/router/tracefile.py): written in batches as the core works, read back
whole and in order; a file cut short by a kill reads up to its last whole batch."""

from __future__ import annotations

from pathlib import Path

from refimpl.core.commands import SendExit
from refimpl.core.events import RequestArrived
from refimpl.core.trace import At
from refimpl.router.tracefile import BATCH, TraceWriter, read_trace


def entries(n: int) -> list[At]:
    return [At(float(i), RequestArrived(i, "m", None) if i % 2 else SendExit(i))
            for i in range(n)]


def test_entries_are_written_as_batches_fill_and_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "trace"
    written = entries(2 * BATCH + 5)
    writer = TraceWriter(path)
    writer.extend(written[:BATCH - 1])
    assert path.stat().st_size == 0  # nothing until a batch is full
    writer.append(written[BATCH - 1])
    assert read_trace(path) == written[:BATCH]  # on disk before the router stops
    writer.extend(written[BATCH:])
    writer.close()
    assert len(writer) == len(written)
    assert read_trace(path) == written


def test_a_file_cut_short_reads_up_to_its_last_whole_batch(tmp_path: Path) -> None:
    path = tmp_path / "trace"
    written = entries(BATCH + 3)
    writer = TraceWriter(path)
    writer.extend(written)
    writer.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # the last batch's end lost
    assert read_trace(path) == written[:BATCH]


def test_an_empty_run_is_an_empty_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace"
    TraceWriter(path).close()
    assert read_trace(path) == []
