"""The decoder's checks, in order: limits, structure, key, signature, digest, freshness, replay, body."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from qflare.crypto import generate_key
from qflare.errors import (
    DigestMismatchError,
    KeyMismatchError,
    LimitError,
    NonFiniteTensorError,
    ReplayError,
    SchemaError,
    SignatureError,
    StaleMessageError,
    TensorError,
    UnknownKeyError,
    VersionError,
)
from qflare.protocol import KeyRing, Limits, Tensor, seal, wire
from qflare.protocol.decoder import Decoder, ReplayCache
from qflare.protocol.devices import Enrollment, Heartbeat
from qflare.protocol.envelope import Chunk, new_message_id
from qflare.protocol.training import ModelUpdate
from tests.unit.protocol.helpers import (
    CHANNEL,
    DEPLOYMENT,
    NOW,
    OTHER,
    SENDER,
    SIGNER,
    TOPIC,
    decoder,
    raw_record,
    small_tensors,
)


def _hb(seq: int = 1, **kw: object) -> bytes:
    return seal(Heartbeat(SENDER, seq), SIGNER, CHANNEL, sender=SENDER, ts_ms=kw.pop("ts_ms", NOW), **kw)  # type: ignore[arg-type]


def test_valid_record_decodes() -> None:
    d = decoder()
    msg = d.decode(_hb(), TOPIC)
    assert msg.body == Heartbeat(SENDER, 1)
    assert msg.header.sender == SENDER
    assert not d.rejected


def test_oversized_record_is_rejected_before_parsing() -> None:
    d = decoder(limits=Limits(max_record_bytes=100_000))
    with pytest.raises(LimitError):
        d.decode(b"\x00" * 100_001, TOPIC)
    assert d.rejected == {"limit": 1}


def test_unknown_version() -> None:
    raw = msgpack.unpackb(_hb())
    raw["v"] = 9
    with pytest.raises(VersionError):
        decoder().decode(msgpack.packb(raw), TOPIC)


def test_expired_and_future_timestamps() -> None:
    d = decoder(max_age_ms=60_000, max_skew_ms=5_000)
    with pytest.raises(StaleMessageError) as info:
        d.decode(_hb(ts_ms=NOW - 60_001), TOPIC)
    assert info.value.field == "ts_ms"
    with pytest.raises(StaleMessageError):
        d.decode(_hb(ts_ms=NOW + 5_001), TOPIC)
    d.decode(_hb(ts_ms=NOW - 60_000), TOPIC)
    d.decode(_hb(ts_ms=NOW + 5_000), TOPIC)
    assert decoder(max_age_ms=None).decode(_hb(ts_ms=1), TOPIC).header.ts_ms == 1
    assert d.rejected == {"stale": 2}


def test_replayed_id_is_rejected() -> None:
    d = decoder()
    record = _hb()
    d.decode(record, TOPIC)
    with pytest.raises(ReplayError) as info:
        d.decode(record, TOPIC)
    assert info.value.field == "id"
    # Same id from another sender is a different message.
    other = raw_record(wire.pack(Heartbeat("dev-2", 1).to_body()), signer=OTHER, sender="dev-2")
    d.decode(other, TOPIC)


def test_rejected_message_does_not_poison_the_replay_cache() -> None:
    d = decoder()
    msg_id = new_message_id(NOW)
    bad = raw_record(wire.pack({"device_id": SENDER}), msg_id=msg_id)
    with pytest.raises(SchemaError):
        d.decode(bad, TOPIC)
    d.decode(raw_record(wire.pack(Heartbeat(SENDER, 1).to_body()), msg_id=msg_id), TOPIC)


def test_unknown_key() -> None:
    stranger = generate_key().signer()
    record = seal(Heartbeat(SENDER, 1), stranger, CHANNEL, sender=SENDER, ts_ms=NOW)
    with pytest.raises(UnknownKeyError) as info:
        decoder().decode(record, TOPIC)
    assert info.value.field == "key_id"
    assert info.value.retriable


def test_key_of_another_sender() -> None:
    record = seal(Heartbeat(SENDER, 1), OTHER, CHANNEL, sender=SENDER, ts_ms=NOW)
    with pytest.raises(KeyMismatchError) as info:
        decoder().decode(record, TOPIC)
    assert info.value.field == "sender"


def test_valid_signature_over_a_different_body() -> None:
    a = msgpack.unpackb(_hb(1))
    b = msgpack.unpackb(_hb(2))
    a["body"] = b["body"]
    with pytest.raises(DigestMismatchError) as info:
        decoder().decode(msgpack.packb(a), TOPIC)
    assert info.value.field == "body"
    assert isinstance(info.value, SignatureError)


def test_header_altered_after_signing() -> None:
    raw = msgpack.unpackb(_hb())
    raw["round"] = 5
    with pytest.raises(SignatureError) as info:
        decoder().decode(msgpack.packb(raw), TOPIC)
    assert info.value.field == "sig"


def test_type_not_accepted_on_this_topic() -> None:
    with pytest.raises(SchemaError) as info:
        decoder(allowed_types={"model_update"}).decode(_hb(), TOPIC)
    assert info.value.field == "type"


def test_chunk_field_only_on_chunks() -> None:
    chunk = Chunk(new_message_id(NOW), 0, 1)
    with pytest.raises(SchemaError) as info:
        decoder().decode(raw_record(wire.pack(Heartbeat(SENDER, 1).to_body()), chunk=chunk), TOPIC)
    assert info.value.field == "chunk"
    with pytest.raises(SchemaError):
        decoder().decode(raw_record(b"\x80", type_="model_chunk"), TOPIC)


def test_body_schema_errors_name_the_body_field() -> None:
    with pytest.raises(SchemaError) as info:
        decoder().decode(
            raw_record(wire.pack({"device_id": SENDER, "seq": "one", "state": "idle", "metrics": {}})), TOPIC
        )
    assert info.value.field == "body.seq"


def test_non_finite_tensor_is_rejected_unless_disabled() -> None:
    bad = (Tensor.of("w", np.array([1.0, np.nan], dtype=np.float32)),)
    record = seal(ModelUpdate("job-1", 1, SENDER, 0, 10, bad), SIGNER, CHANNEL, sender=SENDER, ts_ms=NOW)
    with pytest.raises(NonFiniteTensorError) as info:
        decoder().decode(record, TOPIC)
    assert info.value.field == "body.tensors[0].data"
    assert decoder(check_finite=False).decode(record, TOPIC).body.all_tensors()[0].array.size == 2


def test_tensor_shape_not_matching_bytes() -> None:
    body = ModelUpdate("job-1", 1, SENDER, 0, 10, small_tensors()).to_body()
    body["tensors"][0]["shape"] = [3, 3]
    with pytest.raises(TensorError) as info:
        decoder().decode(raw_record(wire.pack(body), type_="model_update"), TOPIC)
    assert info.value.field == "body.tensors[0].data"


def test_enrollment_is_self_signed_when_allowed() -> None:
    key = generate_key()
    signer = key.signer()
    record = seal(Enrollment("dev-9", key.public_key), signer, CHANNEL, sender="dev-9", ts_ms=NOW)
    with pytest.raises(UnknownKeyError):
        decoder().decode(record, TOPIC)
    msg = decoder(self_signed={"enrollment"}).decode(record, TOPIC)
    assert msg.body == Enrollment("dev-9", key.public_key)


def test_self_signed_enrollment_must_match_its_claims() -> None:
    key = generate_key()
    # The body names another device: the key would be owned by dev-8, not the sender.
    record = seal(Enrollment("dev-8", key.public_key), key.signer(), CHANNEL, sender="dev-9", ts_ms=NOW)
    with pytest.raises(KeyMismatchError) as info:
        decoder(self_signed={"enrollment"}).decode(record, TOPIC)
    assert info.value.field == "sender"
    # The body carries someone else's public key.
    record = seal(Enrollment("dev-9", OTHER.public_key), key.signer(), CHANNEL, sender="dev-9", ts_ms=NOW)
    with pytest.raises(KeyMismatchError) as info:
        decoder(self_signed={"enrollment"}).decode(record, TOPIC)
    assert info.value.field == "key_id"
    # A forged signature on a well-formed claim.
    raw = msgpack.unpackb(
        seal(Enrollment("dev-9", key.public_key), key.signer(), CHANNEL, sender="dev-9", ts_ms=NOW)
    )
    raw["sig"] = bytes(3309)
    with pytest.raises(SignatureError):
        decoder(self_signed={"enrollment"}).decode(msgpack.packb(raw), TOPIC)


def test_revoked_key_stops_verifying() -> None:
    keys = KeyRing()
    kid = keys.add(SENDER, SIGNER.public_key)
    d = Decoder(keys, clock=lambda: NOW, deployment=DEPLOYMENT)
    d.decode(_hb(1), TOPIC)
    keys.remove(kid)
    with pytest.raises(UnknownKeyError):
        d.decode(_hb(2), TOPIC)
    assert len(keys) == 0


def test_replay_cache_ttl_and_capacity() -> None:
    cache = ReplayCache(max_entries=3, ttl_ms=100)
    cache.add(("a", b"1"), 0)
    cache.add(("a", b"2"), 50)
    assert ("a", b"1") in cache
    cache.add(("a", b"3"), 120)  # entry 1 is now past the TTL
    assert ("a", b"1") not in cache
    assert ("a", b"2") in cache
    cache.add(("a", b"4"), 121)
    cache.add(("a", b"5"), 122)  # capacity 3: entry 2 is the oldest and goes
    assert ("a", b"2") not in cache
    assert len(cache) == 3


def test_decoder_counts_rejections_by_reason() -> None:
    d = decoder()
    record = _hb()
    for data in (b"", b"\xc1"):
        with pytest.raises(SchemaError):
            d.decode(data, TOPIC)
    d.decode(record, TOPIC)
    with pytest.raises(ReplayError):
        d.decode(record, TOPIC)
    assert d.rejected == {"schema": 2, "replay": 1}


def test_non_finite_metrics_are_refused_even_when_tensors_may_be() -> None:
    record = raw_record(wire.pack(Heartbeat(SENDER, 1, "idle", {"cpu": float("nan")}).to_body()))
    for d in (decoder(), decoder(check_finite=False)):
        with pytest.raises(NonFiniteTensorError) as info:
            d.decode(record, TOPIC)
        assert (info.value.reason, info.value.field) == ("non_finite", "body.metrics.cpu")


def test_a_signature_of_the_wrong_length_is_a_schema_error() -> None:
    raw = msgpack.unpackb(_hb())
    raw["sig"] = raw["sig"][:-1]
    with pytest.raises(SchemaError) as info:
        decoder().decode(msgpack.packb(raw), TOPIC)
    assert (info.value.reason, info.value.field) == ("schema", "sig")


def test_structure_is_checked_before_finiteness() -> None:
    nan = Tensor.of("w", np.array([np.nan], dtype=np.float32))
    body = ModelUpdate("job-1", 1, SENDER, 0, 10, (nan, Tensor.of("w", np.zeros(1, np.float32)))).to_body()
    with pytest.raises(TensorError) as info:
        decoder().decode(raw_record(wire.pack(body), type_="model_update"), TOPIC)
    assert (info.value.reason, info.value.field) == ("tensor", "body.tensors[1].name")
