"""Stored model versions are the published body, byte for byte, and decode back."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from qflare.errors import AggregationError
from qflare.ml import init_weights, tensor_names
from services.aggregator.models import Layout, decode, encode, weights_of


def test_encode_is_deterministic_and_decodes() -> None:
    weights = init_weights("2nn", 3)
    a = encode("job", 4, weights, tensor_names("2nn"), round=7, model="2nn", parent=3)
    b = encode("job", 4, [w.copy() for w in weights], tensor_names("2nn"), round=7, model="2nn", parent=3)
    assert a.data == b.data and a.digest == hashlib.sha256(a.data).digest()
    back = decode(a.data)
    assert back.job_id == "job" and back.version == 4 and back.round == 7 and back.metadata["parent"] == 3
    for got, expected in zip(weights_of(back, Layout.of("2nn")), weights, strict=True):
        assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()


def test_layout_mismatch_and_corrupt_rows_are_aggregation_errors() -> None:
    model = encode(
        "job", 0, init_weights("2nn", 0), tensor_names("2nn"), round=None, model="2nn", parent=None
    )
    with pytest.raises(AggregationError):
        weights_of(decode(model.data), Layout.of("cnn"))
    with pytest.raises(AggregationError):
        decode(model.data[:-3])
