"""Chunked updates survive a restart: the checkpoint keeps their first chunks, nothing else is re-read."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from aiokafka import ConsumerRecord

from qflare.crypto import KeyFile, generate_key
from qflare.errors import NonFiniteTensorError, Rejected, UnknownKeyError
from qflare.fl import NDArrays
from qflare.kafka import KafkaSettings
from qflare.keys import DeviceKeys
from qflare.ml import init_weights, tensor_names
from qflare.protocol import Tensor, seal_chunked, topics
from qflare.protocol.channel import DEFAULT_DEPLOYMENT
from qflare.protocol.devices import Device
from qflare.protocol.training import ModelUpdate
from services.aggregator.cursor import Cursor
from services.aggregator.intake import Intake

SPEC = topics("", deployment=DEFAULT_DEPLOYMENT).updates
LIMITS = KafkaSettings().limits


def _records(
    device: str, key: KeyFile, seed: int, chunk_bytes: int | None, weights: NDArrays | None = None
) -> list[bytes]:
    arrays = init_weights("2nn", seed) if weights is None else weights
    tensors = tuple(Tensor.of(n, w) for n, w in zip(tensor_names("2nn"), arrays, strict=True))
    body = ModelUpdate("job", 1, device, 0, 10, tensors, {"loss": 0.1})
    return seal_chunked(body, key.signer(), SPEC.channel, sender=device, round=1, chunk_bytes=chunk_bytes)


def _kafka(offset: int, value: bytes) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(SPEC.name, 0, offset, 0, 0, b"k", value, None, 1, len(value), [])


def _intake(keys: DeviceKeys) -> Intake:
    return Intake(keys, SPEC, LIMITS, timeout_ms=60_000, max_streams=8)


def test_half_a_stream_is_reopened_after_a_restart_and_the_rest_skipped() -> None:
    keys = DeviceKeys()
    ka, kb = generate_key(), generate_key()
    keys.apply(Device("a", "active", ka.public_key, 1, 1))
    keys.apply(Device("b", "active", kb.public_key, 1, 1))
    chunks = _records("a", ka, 1, 100_000)
    whole_b = _records("b", kb, 2, None)
    assert len(chunks) > 4 and len(whole_b) == 1
    log = [*chunks[:3], whole_b[0], *chunks[3:]]  # b's update lands between a's chunks

    cursor, intake = Cursor(SPEC.name, 0), _intake(keys)
    for offset, value in enumerate(log[:4]):
        got = intake.read(_kafka(offset, value), cursor)
        cursor.advance(offset)
    assert got is not None and got[0].header.sender == "b"
    assert cursor.resume_offset == 0 and cursor.next_offset == 4

    # kill -9 here: only the checkpoint row survives.
    restored = Cursor.restore(SPEC.name, 0, cursor.next_offset, cursor.streams_json(), now_ms=0)
    intake = _intake(keys)
    out = []
    for offset in range(restored.resume_offset, len(log)):
        got = intake.read(_kafka(offset, log[offset]), restored)
        restored.advance(offset)
        if got is not None:
            out.append(got)
    ((msg, size),) = out  # b's update is not handled twice; a's completes from both halves
    assert msg.header.sender == "a" and isinstance(msg.body, ModelUpdate)
    assert size == sum(len(c) for c in chunks)
    assert restored.open_streams == {} and restored.resume_offset == len(log)


def test_revoked_and_unknown_keys() -> None:
    keys = DeviceKeys()
    key = generate_key()
    keys.apply(Device("a", "revoked", key.public_key, 1, 1))
    intake = _intake(keys)
    with pytest.raises(Rejected) as caught:
        intake.read(_kafka(0, _records("a", key, 1, None)[0]), Cursor(SPEC.name, 0))
    assert caught.value.reason == "revoked"
    stranger = generate_key()
    with pytest.raises(UnknownKeyError) as unknown:
        intake.read(_kafka(1, _records("z", stranger, 1, None)[0]), Cursor(SPEC.name, 0))
    assert unknown.value.key_id == stranger.key_id
    assert stranger.key_id.hex() in str(unknown.value)
    assert unknown.value.detail == {"key_id": stranger.key_id.hex()}


@pytest.mark.parametrize("chunk_bytes", [None, 100_000])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_update_is_refused_once_by_the_decoder(chunk_bytes: int | None, bad: float) -> None:
    """The intake's decoder is the one finiteness check, whole or chunked, with the same reason as before."""
    keys = DeviceKeys()
    key = generate_key()
    keys.apply(Device("a", "active", key.public_key, 1, 1))
    weights = init_weights("2nn", 1)
    weights[3][0] = bad
    intake, cursor = _intake(keys), Cursor(SPEC.name, 0)
    with pytest.raises(NonFiniteTensorError) as caught:
        for offset, record in enumerate(_records("a", key, 1, chunk_bytes, weights)):
            intake.read(_kafka(offset, record), cursor)
            cursor.advance(offset)
    assert caught.value.reason == "non_finite" and caught.value.field == "body.tensors[3].data"
