"""Hostile input: whatever arrives, the decoder raises a typed ``ProtocolError`` or accepts.

Accepting is only possible for input that is a correctly signed message; all
mutations of a valid record below must be refused.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.crypto import generate_key
from qflare.errors import (
    DigestMismatchError,
    KeyMismatchError,
    LimitError,
    NonFiniteTensorError,
    ProtocolError,
    ReplayError,
    SchemaError,
    SignatureError,
    StaleMessageError,
    TensorError,
    UnknownKeyError,
    VersionError,
)
from qflare.protocol import Tensor, seal, wire
from qflare.protocol.devices import Heartbeat
from qflare.protocol.envelope import FIELDS
from qflare.protocol.messages import BODY_TYPES
from qflare.protocol.training import ModelUpdate
from tests.unit.protocol.helpers import (
    CHANNEL,
    NOW,
    OTHER,
    SENDER,
    SIGNER,
    TOPIC,
    decoder,
    raw_record,
    small_tensors,
)

HEARTBEAT = seal(
    Heartbeat(SENDER, 1, "idle", {"cpu": 0.5}), SIGNER, CHANNEL, sender=SENDER, round=3, ts_ms=NOW
)
UPDATE = seal(
    ModelUpdate("job-1", 3, SENDER, 2, 10, small_tensors()),
    SIGNER,
    CHANNEL,
    sender=SENDER,
    round=3,
    ts_ms=NOW,
)


def _refused(data: bytes) -> ProtocolError:
    try:
        decoder().decode(data, TOPIC)
    except ProtocolError as exc:
        return exc
    raise AssertionError("decoder accepted the input")


@settings(max_examples=500)
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _refused(data)


@pytest.mark.parametrize("record", [HEARTBEAT, UPDATE], ids=["heartbeat", "model_update"])
def test_every_single_byte_flip(record: bytes) -> None:
    for mask in (0xFF, 0x01):
        for i in range(len(record)):
            mutated = bytearray(record)
            mutated[i] ^= mask
            _refused(bytes(mutated))


@pytest.mark.parametrize("record", [HEARTBEAT, UPDATE], ids=["heartbeat", "model_update"])
def test_every_truncation(record: bytes) -> None:
    for n in range(len(record)):
        assert isinstance(_refused(record[:n]), SchemaError | LimitError)
    _refused(record + b"\x00")


WRONG_VALUES: list[object] = [
    None,
    True,
    0,
    -1,
    1 << 63,
    1.5,
    "",
    "x" * 300,
    b"",
    b"\x00" * 17,
    [],
    {},
    [1],
    {"a": 1},
]


@pytest.mark.parametrize("field", FIELDS)
def test_wrong_type_in_every_field(field: str) -> None:
    for value in WRONG_VALUES:
        raw = msgpack.unpackb(HEARTBEAT)
        if type(raw[field]) is type(value) and raw[field] == value:
            continue  # not a change
        raw[field] = value
        _refused(msgpack.packb(raw))


HUGE_HEADERS = [
    b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
]


@pytest.mark.parametrize("field", FIELDS)
def test_huge_declared_lengths_in_every_field(field: str) -> None:
    raw = msgpack.unpackb(HEARTBEAT)
    key = msgpack.packb(field)
    for header in HUGE_HEADERS:
        # Everything up to the field's key, then a value header that claims ~4 GiB.
        prefix = b"\x8c" + b"".join(msgpack.packb(k) + msgpack.packb(raw[k]) for k in FIELDS if k != field)
        assert isinstance(_refused(prefix + key + header), LimitError)
    assert isinstance(_refused(b"\xdf\xff\xff\xff\xff"), LimitError)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["set", "insert", "delete"]), st.integers(min_value=0), st.integers(0, 255)
        ),
        min_size=1,
        max_size=8,
    )
)
def test_random_mutations(ops: list[tuple[str, int, int]]) -> None:
    data = bytearray(HEARTBEAT)
    for op, pos, byte in ops:
        i = pos % (len(data) + 1)
        if op == "insert":
            data.insert(i, byte)
        elif data and i < len(data):
            if op == "set":
                data[i] = byte
            else:
                del data[i]
    if bytes(data) == HEARTBEAT:
        return
    _refused(bytes(data))


bodies = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=8),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(BODY_TYPES)), bodies)
def test_correctly_signed_garbage_bodies(type_: str, body: object) -> None:
    record = raw_record(wire.pack(body), type_=type_)
    with contextlib.suppress(ProtocolError):
        decoder().decode(record, TOPIC)


def _with_version(v: int) -> bytes:
    raw = msgpack.unpackb(HEARTBEAT)
    raw["v"] = v
    return bytes(msgpack.packb(raw))


def _other_body() -> bytes:
    raw = msgpack.unpackb(HEARTBEAT)
    raw["body"] = wire.pack(Heartbeat(SENDER, 2).to_body())
    return bytes(msgpack.packb(raw))


def _tensor_body(array: np.ndarray, shape: list[int] | None = None) -> bytes:
    body = ModelUpdate("job-1", 3, SENDER, 2, 10, (Tensor.of("w", array),)).to_body()
    if shape is not None:
        body["tensors"][0]["shape"] = shape
    return raw_record(wire.pack(body), type_="model_update")


def _replayed() -> bytes:
    return HEARTBEAT


CASES: list[tuple[str, Callable[[], bytes], type[ProtocolError]]] = [
    ("unknown version", lambda: _with_version(3), VersionError),
    ("version 1 (signed no channel)", lambda: _with_version(1), VersionError),
    (
        "expired timestamp",
        lambda: raw_record(wire.pack(Heartbeat(SENDER, 1).to_body()), ts_ms=NOW - 3_600_000),
        StaleMessageError,
    ),
    (
        "future timestamp",
        lambda: raw_record(wire.pack(Heartbeat(SENDER, 1).to_body()), ts_ms=NOW + 3_600_000),
        StaleMessageError,
    ),
    (
        "unknown key_id",
        lambda: seal(Heartbeat(SENDER, 1), generate_key().signer(), CHANNEL, sender=SENDER, ts_ms=NOW),
        UnknownKeyError,
    ),
    (
        "key of another sender",
        lambda: seal(Heartbeat(SENDER, 1), OTHER, CHANNEL, sender=SENDER, ts_ms=NOW),
        KeyMismatchError,
    ),
    ("valid signature, other body", _other_body, DigestMismatchError),
    ("NaN in a tensor", lambda: _tensor_body(np.array([np.nan], dtype=np.float32)), NonFiniteTensorError),
    ("Inf in a tensor", lambda: _tensor_body(np.array([np.inf], dtype=np.float16)), NonFiniteTensorError),
    ("shape vs bytes", lambda: _tensor_body(np.zeros(4, dtype=np.float32), [5]), TensorError),
    ("bad digest", lambda: raw_record(b"\x80", digest=hashlib.sha256(b"x").digest()), DigestMismatchError),
    (
        "forged signature",
        lambda: msgpack.packb({**msgpack.unpackb(HEARTBEAT), "sig": bytes(3309)}),
        SignatureError,
    ),
]


@pytest.mark.parametrize(("name", "make", "error"), CASES, ids=[c[0] for c in CASES])
def test_catalogue_of_attacks(name: str, make: Callable[[], bytes], error: type[ProtocolError]) -> None:
    exc = _refused(make())
    assert type(exc) is error, (name, exc)
    assert exc.field, name
    assert exc.reason == error.reason


def test_replayed_id() -> None:
    d = decoder()
    d.decode(_replayed(), TOPIC)
    with pytest.raises(ReplayError):
        d.decode(_replayed(), TOPIC)
