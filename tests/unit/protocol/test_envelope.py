"""Envelope building and parsing: exact field set, signed bytes, UUIDv7 ids."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from qflare.errors import LimitError, SchemaError, VersionError
from qflare.protocol import Limits, seal
from qflare.protocol.devices import Heartbeat
from qflare.protocol.envelope import (
    FIELDS,
    SIGNING_DOMAIN,
    Chunk,
    is_uuid7,
    new_message_id,
    parse_envelope,
)
from qflare.protocol.training import GlobalModel
from tests.unit.protocol.helpers import CHANNEL, NOW, SENDER, SIGNER, sample_bodies


def _record() -> bytes:
    return seal(Heartbeat("dev-1", 1), SIGNER, CHANNEL, sender=SENDER, round=4, ts_ms=NOW)


def test_record_is_a_map_of_exactly_the_twelve_fields_in_order() -> None:
    raw = msgpack.unpackb(_record())
    assert list(raw) == list(FIELDS)
    assert raw["v"] == 2
    assert raw["type"] == "heartbeat"
    assert raw["sender"] == SENDER
    assert raw["key_id"] == SIGNER.key_id
    assert raw["ts_ms"] == NOW
    assert raw["round"] == 4
    assert raw["chunk"] is None
    assert raw["sig_alg"] == "ML-DSA-65"
    assert raw["body_digest"] == hashlib.sha256(raw["body"]).digest()
    assert msgpack.unpackb(raw["body"]) == {"device_id": "dev-1", "seq": 1, "state": "idle", "metrics": {}}


def test_signed_bytes_are_the_canonical_header_array() -> None:
    env = parse_envelope(_record())
    head = env.header
    expected = msgpack.packb(
        [
            SIGNING_DOMAIN,
            2,
            CHANNEL.deployment,
            CHANNEL.topic,
            "heartbeat",
            head.id,
            SENDER,
            SIGNER.key_id,
            NOW,
            4,
            head.body_digest,
            None,
            "ML-DSA-65",
        ]
    )
    assert head.signing_bytes(CHANNEL) == expected
    assert expected[0] == 0x9D  # fixarray of 13
    chunked = type(head)(**{**{f: getattr(head, f) for f in head.__slots__}, "chunk": Chunk(head.id, 1, 3)})
    assert msgpack.unpackb(chunked.signing_bytes(CHANNEL))[11] == [head.id, 1, 3]


def test_message_ids_are_uuid7_with_the_timestamp() -> None:
    ids = {new_message_id(NOW) for _ in range(100)}
    assert len(ids) == 100
    for raw in ids:
        assert is_uuid7(raw)
        assert int.from_bytes(raw[:6], "big") == NOW
    assert not is_uuid7(bytes(16))


@pytest.mark.parametrize("body", sample_bodies(), ids=lambda b: b.TYPE)
def test_every_body_type_survives_a_record(body: object) -> None:
    from qflare.protocol import Body

    assert isinstance(body, Body)
    env = parse_envelope(seal(body, SIGNER, CHANNEL, sender=SENDER, ts_ms=NOW))
    assert env.header.type == body.TYPE
    assert type(body).from_body(msgpack.unpackb(bytes(env.body))) == body


def _mutate(**change: object) -> bytes:
    raw = msgpack.unpackb(_record())
    raw.update(change)
    return bytes(msgpack.packb(raw))


def test_unknown_version_is_rejected_before_anything_else() -> None:
    with pytest.raises(VersionError) as info:
        parse_envelope(msgpack.packb({"v": 3, "something": "else"}))
    assert info.value.field == "v"
    with pytest.raises(VersionError):
        parse_envelope(_mutate(v=0))
    # Version 1 signed neither deployment nor topic, so its records are refused.
    with pytest.raises(VersionError):
        parse_envelope(_mutate(v=1))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "Heartbeat"}, "type"),
        ({"type": 1}, "type"),
        ({"id": b"\x00" * 16}, "id"),
        ({"id": b"\x00" * 15}, "id"),
        ({"sender": "has space"}, "sender"),
        ({"sender": ""}, "sender"),
        ({"key_id": b"\x00" * 15}, "key_id"),
        ({"ts_ms": -1}, "ts_ms"),
        ({"ts_ms": 1.5}, "ts_ms"),
        ({"round": "1"}, "round"),
        ({"body_digest": b"\x00" * 31}, "body_digest"),
        ({"body": "text"}, "body"),
        ({"chunk": {"stream": new_message_id(NOW), "index": 3, "count": 3}}, "chunk.index"),
        ({"chunk": {"stream": new_message_id(NOW), "index": 0, "count": 0}}, "chunk.count"),
        ({"chunk": {"stream": new_message_id(NOW), "index": 0, "count": 4097}}, "chunk.count"),
        ({"chunk": {"stream": b"x" * 16, "index": 0, "count": 1}}, "chunk.stream"),
        ({"chunk": {"stream": new_message_id(NOW), "index": 0}}, "chunk.count"),
        ({"chunk": {"stream": new_message_id(NOW), "index": 0, "count": 1, "x": 1}}, "chunk.x"),
        ({"chunk": "s"}, "chunk"),
        ({"sig": bytes(3308)}, "sig"),
        ({"sig": bytes(3310)}, "sig"),
        ({"round": 1 << 63}, "round"),
        ({"sig_alg": "ML-DSA-44"}, "sig_alg"),
        ({"sig": "text"}, "sig"),
        ({"extra": 1}, "extra"),
        ({"v": True}, "v"),
    ],
)
def test_bad_fields_are_named(change: dict[str, object], field: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse_envelope(_mutate(**change))
    assert info.value.field == field


def test_missing_fields_are_named() -> None:
    for name in FIELDS:
        raw = msgpack.unpackb(_record())
        del raw[name]
        with pytest.raises((SchemaError, VersionError)) as info:
            parse_envelope(msgpack.packb(raw))
        assert info.value.field == name


def test_arrays_are_not_part_of_an_envelope() -> None:
    with pytest.raises(LimitError) as info:
        parse_envelope(msgpack.packb([1, 2, 3]))
    assert info.value.field == "$"
    with pytest.raises(LimitError) as info:
        parse_envelope(_mutate(chunk=[1, 2, 3]))
    assert info.value.field == "chunk"
    with pytest.raises(SchemaError):
        parse_envelope(msgpack.packb("a string"))


def test_seal_refuses_bodies_that_need_chunking() -> None:
    import numpy as np

    from qflare.protocol import Tensor

    tiny = Limits(max_record_bytes=64 * 1024)
    model = GlobalModel("job-1", 1, (Tensor.of("w", np.zeros(20_000, dtype=np.float32)),))
    with pytest.raises(LimitError) as info:
        seal(model, SIGNER, CHANNEL, sender=SENDER, limits=tiny)
    assert info.value.field == "body"
