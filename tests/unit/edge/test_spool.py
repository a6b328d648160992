"""The durable outbox keeps order, survives a reopen, and drops only droppable records."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.spool import Spool


def test_fifo_ack_and_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for i in range(5):
        spool.append("t", b"k", f"v{i}".encode())
    first = spool.peek(2)
    assert [r.value for r in first] == [b"v0", b"v1"]
    spool.ack(first[-1].seq)
    spool.close()
    reopened = Spool(tmp_path / "s.db")
    assert len(reopened) == 3
    assert [r.value for r in reopened.peek()] == [b"v2", b"v3", b"v4"]


def test_full_spool_evicts_oldest_droppable_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_records=3)
    spool.append("hb", None, b"beat-1", droppable=True)
    spool.append("up", None, b"update")
    spool.append("hb", None, b"beat-2", droppable=True)
    spool.append("hb", None, b"beat-3", droppable=True)
    assert [r.value for r in spool.peek()] == [b"update", b"beat-2", b"beat-3"]
    assert spool.dropped == 1


def test_full_spool_of_undroppable_records_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_records=1)
    spool.append("up", None, b"update")
    with pytest.raises(OverflowError):
        spool.append("up", None, b"another")
    assert [r.value for r in spool.peek()] == [b"update"]
