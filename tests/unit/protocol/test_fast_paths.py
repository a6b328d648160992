"""The codec's fast paths change nothing observable: same values, same errors, same bytes, no copies."""

from __future__ import annotations

import enum
import random
from collections import OrderedDict, UserDict, UserList
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import ProtocolError
from qflare.protocol import Tensor, seal, wire
from qflare.protocol.devices import Heartbeat
from qflare.protocol.training import ModelUpdate
from tests.unit.protocol import wire_reference
from tests.unit.protocol.helpers import CHANNEL, NOW, SENDER, SIGNER, TOPIC, decoder, small_tensors

LOOSE = wire.WireLimits(1 << 20, 8, 1000, 100, 1000, 1 << 16)
TIGHT = wire.WireLimits(64, 2, 3, 3, 5, 8)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6),
    max_leaves=25,
)


def _outcome(unpack: Any, data: bytes, limits: wire.WireLimits, root: str) -> tuple[object, ...]:
    """A comparable summary: the value (bins as bytes), or the error's class, field and message."""
    try:
        value = unpack(data, limits, root=root)
    except ProtocolError as exc:
        return (type(exc), exc.field, str(exc))
    return ("ok", repr(_plain(value)))


def _plain(obj: object) -> object:
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _same_as_reference(data: bytes) -> None:
    for limits in (LOOSE, TIGHT):
        for root in ("", "body"):
            assert _outcome(wire.unpack, data, limits, root) == _outcome(
                wire_reference.unpack, data, limits, root
            )


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_reader_matches_the_reference_on_random_bytes(data: bytes) -> None:
    _same_as_reference(data)


@settings(max_examples=400)
@given(values, st.randoms(use_true_random=False))
def test_reader_matches_the_reference_on_damaged_msgpack(obj: object, rng: random.Random) -> None:
    data = bytearray(msgpack.packb(obj, use_bin_type=True))
    _same_as_reference(bytes(data))
    if data:
        cut = bytes(data[: rng.randrange(len(data))])
        data[rng.randrange(len(data))] = rng.randrange(256)
        _same_as_reference(cut)
        _same_as_reference(bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb({"[0]": {"a": [1, 2, b"\xff"]}}),  # a key that looks like an index
        msgpack.packb({"outer": [[1, {"k": "\udcff".encode("utf-8", "surrogatepass")}]]}),
        msgpack.packb({"": {".x": [1]}}),
        msgpack.packb([{"a": 1}, {"a": 2, "a ": [None] * 4}]),
        b"\x81\xa1a\x81\x91\x01\x02",  # array as a map key
        b"\x82\xa1a\x01",  # second entry missing
        b"\x81\xbfaaaa",  # fixstr key longer than the input
    ],
)
def test_reader_names_the_same_field_as_the_reference(data: bytes) -> None:
    _same_as_reference(data)


def test_reader_matches_the_reference_on_mutated_records() -> None:
    record = seal(
        ModelUpdate("job-1", 3, SENDER, 2, 10, small_tensors()), SIGNER, CHANNEL, sender=SENDER, ts_ms=NOW
    )
    rng = random.Random(7)
    _same_as_reference(record)
    for _ in range(300):
        data = bytearray(record)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        _same_as_reference(bytes(data[: rng.randrange(len(data) + 1)]))
        _same_as_reference(bytes(data))


class Level(enum.IntEnum):
    HIGH = 300


class Name(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        [0, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x100000000, (1 << 64) - 1],
        [-1, -32, -33, -128, -129, -32768, -32769, -(1 << 31), -(1 << 31) - 1, -(1 << 63)],
        [True, False, None, 1.5, Level.HIGH, Name("n" * 40), "x" * 31, "y" * 32, "z" * 256, "w" * 65536],
        (1, (2, 3)),
        OrderedDict([("b", 1), ("a", [2])]),
        {"m": {str(i): i for i in range(16)}, "l": list(range(16)), "b": b"\x00" * 300},
    ],
)
def test_writer_output_is_msgpack_for_builtins_and_their_subclasses(value: object) -> None:
    assert wire.pack(value) == msgpack.packb(value, use_bin_type=True)


def test_writer_accepts_abstract_mappings_and_sequences() -> None:
    mapping = UserDict({"a": 1})
    sequence = UserList([1, "x"])
    assert wire.pack({"m": mapping, "s": sequence}) == msgpack.packb({"m": {"a": 1}, "s": [1, "x"]})


def test_sealing_passes_tensor_memory_through_to_the_one_copy() -> None:
    array = np.arange(4096, dtype=np.float32)
    update = ModelUpdate("job-1", 3, SENDER, 2, 10, (Tensor.of("w", array),))
    parts = wire.pack_parts(update.to_body())
    assert any(np.shares_memory(np.frombuffer(p, dtype=np.uint8), array) for p in parts)
    assert b"".join(parts) == msgpack.packb(
        {**update.to_body(), "tensors": [{**update.tensors[0].to_wire(), "data": array.tobytes()}]}
    )


def test_decoded_tensors_are_views_into_the_record() -> None:
    update = ModelUpdate("job-1", 3, SENDER, 2, 10, small_tensors(), {"loss": 0.5})
    record = seal(update, SIGNER, CHANNEL, sender=SENDER, round=3, ts_ms=NOW)
    message = decoder().decode(record, TOPIC)
    whole = np.frombuffer(record, dtype=np.uint8)
    assert message.body == update
    for tensor in message.body.all_tensors():
        assert np.shares_memory(tensor.array, whole)
        assert not tensor.array.flags.writeable


def test_heartbeat_still_roundtrips() -> None:
    body = Heartbeat(SENDER, 5, "training", {"cpu": 0.25})
    assert decoder().decode(seal(body, SIGNER, CHANNEL, sender=SENDER, ts_ms=NOW), TOPIC).body == body
