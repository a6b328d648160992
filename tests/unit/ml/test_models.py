"""The paper's models: exact parameter counts, layout, seeded init, weights in and out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qflare.errors import ConfigError, TensorError
from qflare.ml import init_weights, layout, num_params, tensor_names
from qflare.ml.arch import MODEL_NAMES, ModelName
from qflare.ml.models import build_model, check_layout, get_weights, named_weights, set_weights

COUNTS = {"cnn": 1_663_370, "2nn": 199_210}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts_match_the_paper(name: ModelName) -> None:
    model = build_model(name)
    assert num_params(name) == COUNTS[name]
    assert sum(p.numel() for p in model.parameters()) == COUNTS[name]
    check_layout(model, name)  # torch and the numpy-side table agree on names, shapes, order


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shapes(name: ModelName) -> None:
    model = build_model(name)
    with torch.no_grad():
        assert model(torch.zeros(3, 28, 28)).shape == (3, 10)


def test_init_is_seeded_and_independent_of_torch_rng() -> None:
    a, b, c = init_weights("cnn", 1), init_weights("cnn", 1), init_weights("cnn", 2)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    assert a[0].tobytes() != c[0].tobytes()
    assert all(x.dtype == np.float32 for x in a)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    model = build_model("cnn", seed=1)
    assert torch.equal(torch.rand(1), expected)  # building a model did not draw from torch
    assert all(x.tobytes() == y.tobytes() for x, y in zip(get_weights(model), a, strict=True))


def test_weights_round_trip_with_names() -> None:
    weights = init_weights("2nn", 5)
    model = build_model("2nn", weights=weights)
    named = named_weights(model)
    assert [n for n, _ in named] == tensor_names("2nn") == [n for n, _ in layout("2nn")]
    assert all(np.array_equal(w, a) for (_, w), a in zip(named, weights, strict=True))
    out = get_weights(model)
    out[0][0, 0] = 42.0  # copies: editing them does not touch the model
    assert get_weights(model)[0][0, 0] != 42.0


def test_set_weights_accepts_read_only_wire_arrays_and_checks_shapes() -> None:
    weights = init_weights("2nn", 6)
    frozen = [np.frombuffer(w.tobytes(), dtype="<f4").reshape(w.shape) for w in weights]
    assert not frozen[0].flags.writeable
    model = build_model("2nn")
    set_weights(model, frozen)
    assert np.array_equal(get_weights(model)[2], weights[2])
    with pytest.raises(TensorError) as info:
        set_weights(model, [*weights[:-1], np.zeros(11, np.float32)])
    assert info.value.field == "fc3.bias"
    with pytest.raises(TensorError):
        set_weights(model, weights[:2])


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError) as info:
        layout("resnet")
    assert info.value.field == "model"
