"""Stored model versions are the published body, byte for byte, and decode back."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from qflare.errors import AggregationError
from qflare.fl import CONTROL, FedAvg
from qflare.ml import init_weights, tensor_names
from services.aggregator.models import SERVER_GROUPS, Layout, decode, encode, named_groups, weights_of


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


def test_server_groups_follow_the_weights_and_readers_of_the_weights_skip_them() -> None:
    layout = Layout.of("2nn")
    weights = init_weights("2nn", 3)
    control = [np.full_like(w, 0.25) for w in weights]
    spec = FedAvg().update_spec(layout.names, layout.shapes)
    groups = named_groups({CONTROL: control, "aux": weights}, spec, layout)
    assert groups[CONTROL][0] == layout.names  # a group in the model's order takes the model's names
    model = encode("job", 1, weights, layout.names, round=1, model="2nn", parent=0, groups=groups)
    body = decode(model.data)
    names = [t.name for t in body.tensors]
    assert names[: len(layout.names)] == list(layout.names)
    assert names[len(layout.names)] == "aux/" + layout.names[0]
    assert names[-1] == f"{CONTROL}/{layout.names[-1]}"
    assert body.metadata[SERVER_GROUPS] == f"aux,{CONTROL}"
    for got, expected in zip(weights_of(body, layout), weights, strict=True):
        assert got.tobytes() == expected.tobytes()
    # Without server groups the bytes are what they always were (no new metadata key).
    plain = encode("job", 1, weights, layout.names, round=1, model="2nn", parent=0, groups={})
    assert SERVER_GROUPS not in decode(plain.data).metadata
    assert plain.data == encode("job", 1, weights, layout.names, round=1, model="2nn", parent=0).data


def test_a_server_group_of_the_wrong_length_is_refused() -> None:
    layout = Layout.of("2nn")
    spec = FedAvg().update_spec(layout.names, layout.shapes)
    with pytest.raises(AggregationError) as caught:
        named_groups({CONTROL: [np.zeros(1, np.float32)]}, spec, layout)
    assert caught.value.field == f"server_groups.{CONTROL}"
