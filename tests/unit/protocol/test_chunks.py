"""Chunking and reassembly: order independence, duplicates, memory and time bounds, tampering."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from qflare.errors import ChunkError, ChunkTimeoutError, LimitError, Rejected, ReplayError, SchemaError
from qflare.protocol import Limits, Reassembler, Tensor, seal_chunked, wire
from qflare.protocol.devices import Heartbeat
from qflare.protocol.envelope import Chunk, new_message_id, parse_envelope
from qflare.protocol.messages import ModelChunk
from qflare.protocol.training import ModelUpdate
from qflare.reasons import Reason
from tests.unit.protocol.helpers import CHANNEL, NOW, OTHER, SENDER, SIGNER, TOPIC, decoder, raw_record


def _update(n: int = 50_000) -> ModelUpdate:
    rng = np.random.default_rng(1)
    tensors = (Tensor.of("w", rng.standard_normal(n).astype(np.float32)),)
    return ModelUpdate("job-1", 2, SENDER, 1, 100, tensors, {"loss": 1.0})


def _chunks(update: ModelUpdate, chunk_bytes: int = 30_000) -> list[bytes]:
    return seal_chunked(update, SIGNER, CHANNEL, sender=SENDER, round=2, ts_ms=NOW, chunk_bytes=chunk_bytes)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def test_small_bodies_are_not_chunked() -> None:
    records = seal_chunked(Heartbeat(SENDER, 1), SIGNER, CHANNEL, sender=SENDER, ts_ms=NOW)
    assert len(records) == 1
    d = decoder()
    msg = Reassembler(d).feed(d.decode(records[0], TOPIC))
    assert msg is not None and msg.body == Heartbeat(SENDER, 1)


def test_chunks_reassemble_in_any_order_with_duplicates() -> None:
    update = _update()
    records = _chunks(update)
    assert len(records) == 7
    shuffled = records + records[:3]
    random.Random(4).shuffle(shuffled)
    d = decoder()
    r = Reassembler(d)
    done = []
    seen: set[bytes] = set()
    for record in shuffled:
        if record in seen:  # a redelivered record is the decoder's to refuse
            with pytest.raises(ReplayError):
                d.decode(record, TOPIC)
            continue
        seen.add(record)
        out = r.feed(d.decode(record, TOPIC))
        if out is not None:
            done.append(out)
    assert len(done) == 1
    msg = done[0]
    assert msg.body == update
    assert msg.header.type == "model_update"
    assert msg.header.chunk is None
    assert msg.header.round == 2
    assert r.streams == 0 and r.bytes_in_flight == 0


def test_duplicate_chunk_of_an_open_or_finished_stream_is_ignored() -> None:
    records = _chunks(_update())
    d = decoder()
    r = Reassembler(d)
    first = d.decode(records[0], TOPIC)
    assert r.feed(first) is None
    assert r.feed(first) is None
    for record in records[1:]:
        out = r.feed(d.decode(record, TOPIC))
    assert out is not None
    assert r.feed(first) is None  # stream already completed
    assert r.streams == 0


def test_stream_limit_and_bytes_in_flight() -> None:
    d = decoder()
    r = Reassembler(d, max_streams=1)
    assert r.feed(d.decode(_chunks(_update())[0], TOPIC)) is None
    with pytest.raises(LimitError) as info:
        r.feed(d.decode(_chunks(_update())[0], TOPIC))
    assert info.value.field == "chunk.stream"
    r = Reassembler(d, max_streams_per_sender=1)
    assert r.feed(d.decode(_chunks(_update())[0], TOPIC)) is None
    with pytest.raises(LimitError) as info:
        r.feed(d.decode(_chunks(_update())[0], TOPIC))
    assert "open streams" in str(info.value)
    other = seal_chunked(_update(), OTHER, CHANNEL, sender="dev-2", ts_ms=NOW, chunk_bytes=30_000)
    assert r.feed(d.decode(other[0], TOPIC)) is None
    r = Reassembler(d, max_bytes_in_flight=100_000)
    with pytest.raises(LimitError) as info:
        r.feed(d.decode(_chunks(_update(30_000))[0], TOPIC))
    assert info.value.field == "body.size"
    assert r.bytes_in_flight == 0


def test_stale_streams_are_evicted_and_reported() -> None:
    clock = Clock()
    d = decoder(clock=clock, max_age_ms=None)
    r = Reassembler(d, timeout_ms=1000)
    records = _chunks(_update())
    assert r.feed(d.decode(records[0], TOPIC)) is None
    assert r.bytes_in_flight > 0
    clock.now += 1000
    assert r.drain_timeouts() == []
    clock.now += 1
    evicted = r.drain_timeouts()
    assert len(evicted) == 1 and isinstance(evicted[0], ChunkTimeoutError)
    assert r.streams == 0 and r.bytes_in_flight == 0
    assert d.rejected["chunk_timeout"] == 1
    assert r.drain_timeouts() == []


def _chunk_record(body: ModelChunk, stream: bytes, index: int, count: int) -> bytes:
    return raw_record(wire.pack(body.to_body()), type_="model_chunk", chunk=Chunk(stream, index, count))


def test_chunks_that_disagree_drop_the_stream() -> None:
    stream = new_message_id(NOW)
    d = decoder()
    r = Reassembler(d)
    digest = b"\x00" * 32
    assert (
        r.feed(
            d.decode(_chunk_record(ModelChunk("heartbeat", 20, 0, digest, b"a" * 10), stream, 0, 2), TOPIC)
        )
        is None
    )
    with pytest.raises(ChunkError) as info:
        r.feed(
            d.decode(_chunk_record(ModelChunk("heartbeat", 21, 10, digest, b"b" * 11), stream, 1, 2), TOPIC)
        )
    assert info.value.field == "body.size"
    assert r.streams == 0


def test_reassembled_body_must_match_the_digest() -> None:
    stream = new_message_id(NOW)
    d = decoder()
    r = Reassembler(d)
    wrong = hashlib.sha256(b"something else").digest()
    r.feed(d.decode(_chunk_record(ModelChunk("heartbeat", 20, 0, wrong, b"a" * 10), stream, 0, 2), TOPIC))
    with pytest.raises(ChunkError) as info:
        r.feed(
            d.decode(_chunk_record(ModelChunk("heartbeat", 20, 10, wrong, b"b" * 10), stream, 1, 2), TOPIC)
        )
    assert info.value.field == "body.digest"


def test_slice_past_the_end_and_disallowed_inner_type() -> None:
    d = decoder()
    r = Reassembler(d)
    digest = b"\x00" * 32
    with pytest.raises(ChunkError) as info:
        r.feed(
            d.decode(
                _chunk_record(ModelChunk("heartbeat", 20, 15, digest, b"a" * 10), new_message_id(NOW), 0, 2),
                TOPIC,
            )
        )
    assert info.value.field == "body.offset"
    only_updates = decoder(allowed_types={"model_chunk", "model_update"})
    r = Reassembler(only_updates)
    record = _chunk_record(ModelChunk("heartbeat", 20, 0, digest, b"a" * 10), new_message_id(NOW), 0, 2)
    with pytest.raises(SchemaError) as schema:
        r.feed(only_updates.decode(record, TOPIC))
    assert schema.value.field == "body.inner_type"


def test_inner_body_is_validated_after_reassembly() -> None:
    inner = wire.pack({"device_id": SENDER})  # a heartbeat missing most fields
    digest = hashlib.sha256(inner).digest()
    stream = new_message_id(NOW)
    d = decoder()
    with pytest.raises(SchemaError):
        Reassembler(d).feed(
            d.decode(
                _chunk_record(ModelChunk("heartbeat", len(inner), 0, digest, inner), stream, 0, 1), TOPIC
            )
        )


def test_seal_chunked_limits() -> None:
    with pytest.raises(LimitError):
        seal_chunked(_update(), SIGNER, CHANNEL, sender=SENDER, chunk_bytes=0)
    with pytest.raises(LimitError) as info:
        seal_chunked(
            _update(), SIGNER, CHANNEL, sender=SENDER, chunk_bytes=1000, limits=Limits(max_chunks=10)
        )
    assert info.value.field == "chunk.count"
    with pytest.raises(LimitError):
        seal_chunked(
            _update(), SIGNER, CHANNEL, sender=SENDER, chunk_bytes=1000, limits=Limits(max_message_bytes=1000)
        )


def test_default_limits_send_the_fedavg_cnn_in_one_record() -> None:
    update = _update(1_663_370)
    records = seal_chunked(update, SIGNER, CHANNEL, sender=SENDER, ts_ms=NOW)
    assert len(records) == 1
    assert len(records[0]) <= Limits().max_record_bytes
    assert decoder().decode(records[0], TOPIC).body == update


def _pieces(whole: bytes, cuts: list[int]) -> list[ModelChunk]:
    digest = hashlib.sha256(whole).digest()
    return [
        ModelChunk("heartbeat", len(whole), cuts[i], digest, whole[cuts[i] : cuts[i + 1]])
        for i in range(len(cuts) - 1)
    ]


def test_unequal_slices_that_tile_the_body_are_accepted() -> None:
    whole = wire.pack(Heartbeat(SENDER, 9, "idle", {"cpu": 0.5}).to_body())
    stream = new_message_id(NOW)
    d = decoder()
    r = Reassembler(d)
    pieces = _pieces(whole, [0, 3, 4, 20, len(whole)])
    records = [_chunk_record(p, stream, i, len(pieces)) for i, p in enumerate(pieces)]
    out = [r.feed(d.decode(rec, TOPIC)) for rec in reversed(records)]
    assert out[:-1] == [None] * (len(records) - 1)
    assert out[-1] is not None and out[-1].body == Heartbeat(SENDER, 9, "idle", {"cpu": 0.5})


def test_slices_must_start_where_the_previous_one_ended() -> None:
    whole = wire.pack(Heartbeat(SENDER, 9).to_body())
    digest = hashlib.sha256(whole).digest()
    half = len(whole) // 2
    # Overlapping slices that still fill the buffer with the right bytes: refused all the same.
    overlapping = [
        ModelChunk("heartbeat", len(whole), 0, digest, whole[: half + 2]),
        ModelChunk("heartbeat", len(whole), half, digest, whole[half:]),
    ]
    stream = new_message_id(NOW)
    d = decoder()
    r = Reassembler(d)
    assert r.feed(d.decode(_chunk_record(overlapping[0], stream, 0, 2), TOPIC)) is None
    with pytest.raises(ChunkError) as info:
        r.feed(d.decode(_chunk_record(overlapping[1], stream, 1, 2), TOPIC))
    assert info.value.field == "body.offset"
    # The stream is closed and remembered: a late chunk of it is ignored.
    assert r.feed(d.decode(_chunk_record(overlapping[1], stream, 1, 2), TOPIC)) is None


def test_the_reassembled_message_carries_chunk_zeros_header() -> None:
    whole = wire.pack(Heartbeat(SENDER, 9).to_body())
    stream = new_message_id(NOW)
    pieces = _pieces(whole, [0, 5, len(whole)])
    later = raw_record(
        wire.pack(pieces[1].to_body()), type_="model_chunk", chunk=Chunk(stream, 1, 2), ts_ms=NOW + 500
    )
    d = decoder()
    r = Reassembler(d)
    assert r.feed(d.decode(later, TOPIC)) is None
    msg = r.feed(d.decode(_chunk_record(pieces[0], stream, 0, 2), TOPIC))
    assert msg is not None
    assert (msg.header.id, msg.header.ts_ms, msg.header.type) == (stream, NOW, "heartbeat")
    assert msg.header.body_digest == hashlib.sha256(whole).digest()


def test_one_senders_stream_flood_leaves_room_for_another_sender() -> None:
    # Each stream declares ~200 KB and sends one small chunk: before per-sender quotas, two such
    # streams from one device held the whole budget and every other device's update was refused.
    d = decoder()
    r = Reassembler(d, max_bytes_in_flight=500_000, max_bytes_per_sender=300_000)
    flood = [_chunks(_update(50_000 + i))[0] for i in range(2)]
    assert r.feed(d.decode(flood[0], TOPIC)) is None
    with pytest.raises(Rejected) as info:
        r.feed(d.decode(flood[1], TOPIC))
    assert info.value.reason == Reason.QUOTA and info.value.field == "body.size"
    other = seal_chunked(_update(), OTHER, CHANNEL, sender="dev-2", ts_ms=NOW, chunk_bytes=30_000)
    done = [r.feed(d.decode(record, TOPIC)) for record in other]
    assert done[-1] is not None and done[-1].header.sender == "dev-2"


def test_a_trickled_stream_is_evicted_at_its_lifetime() -> None:
    clock = Clock()
    d = decoder(clock=clock, max_age_ms=None)
    r = Reassembler(d, timeout_ms=1000, lifetime_ms=2500)
    records = _chunks(_update())
    for record in records[:3]:  # one chunk per 900 ms keeps it from ever idling out
        assert r.feed(d.decode(record, TOPIC)) is None
        clock.now += 900
    assert r.streams == 1
    # 2700 ms after it opened, 900 ms after its last chunk
    (timeout,) = r.drain_timeouts()
    assert isinstance(timeout, ChunkTimeoutError) and "lifetime" in str(timeout)
    assert r.streams == 0 and r.bytes_in_flight == 0
    chunk = parse_envelope(records[0], Limits()).header.chunk
    assert chunk is not None and r.drain_evicted() == [(SENDER, chunk.stream)]


def test_admit_refuses_a_declared_size_before_any_buffer() -> None:
    d = decoder()

    def admit(msg: object, body: ModelChunk) -> None:
        if body.size > 1000:
            raise Rejected(Reason.SHAPE, "too big for the job", field="body.size")

    r = Reassembler(d, admit=admit)
    with pytest.raises(Rejected) as info:
        r.feed(d.decode(_chunks(_update())[0], TOPIC))
    assert info.value.reason == Reason.SHAPE and r.bytes_in_flight == 0 and r.streams == 0
