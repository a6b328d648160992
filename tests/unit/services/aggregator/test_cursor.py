"""Resume positions keep half-received chunk streams, and survive the checkpoint row."""

from __future__ import annotations

from services.aggregator.cursor import Cursor


def test_resume_offset_stays_at_the_first_chunk_of_an_open_stream() -> None:
    c = Cursor("updates", 0)
    assert c.resume_offset == 0 and not c.dirty
    c.advance(4)
    assert c.next_offset == 5 and c.resume_offset == 5 and c.dirty
    c.chunk_seen(("dev", b"s1"), 5, now_ms=100)
    c.advance(5)
    c.chunk_seen(("dev", b"s1"), 7, now_ms=200)
    c.advance(7)
    assert c.next_offset == 8 and c.resume_offset == 5
    c.stream_done(("dev", b"s1"))
    assert c.resume_offset == 8
    c.advance(3)  # never backwards
    assert c.next_offset == 8


def test_idle_streams_expire() -> None:
    c = Cursor("updates", 1, next_offset=10)
    c.chunk_seen(("a", b"s"), 2, now_ms=100)
    c.chunk_seen(("b", b"t"), 6, now_ms=900)
    assert c.expire(500) == [("a", b"s")]
    assert c.resume_offset == 6


def test_checkpoint_round_trip_replays_only_open_streams() -> None:
    c = Cursor("updates", 2, next_offset=20)
    c.chunk_seen(("dev", b"\x01\x02"), 12, now_ms=1)
    row = c.streams_json()
    assert row == [["dev", "0102", 12]]
    back = Cursor.restore("updates", 2, 20, row, now_ms=50)
    assert back.resume_offset == 12 and back.next_offset == 20
    assert back.handled_before(19) and not back.handled_before(20)
    assert ("dev", b"\x01\x02") in back.open_streams
