"""Architectures as plain data: tensor names, shapes and a seeded initialisation, without torch.

The aggregator and scheduler need a model's layout and its initial weights, but
not a deep-learning framework; keeping this module numpy-only lets those services
create version 0 of a global model without importing torch. ``qflare.ml.models``
builds the matching torch modules and checks that they agree with this table.

Both models are from McMahan et al. (2017), "Communication-Efficient Learning
of Deep Networks from Decentralized Data":

- ``cnn``: conv5x5(32, same) - ReLU - maxpool2 - conv5x5(64, same) - ReLU - maxpool2
  - FC 3136->512 - ReLU - FC 512->10; 1,663,370 parameters.
- ``2nn``: FC 784->200 - ReLU - FC 200->200 - ReLU - FC 200->10; 199,210 parameters.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

from qflare.errors import ConfigError
from qflare.fl.arrays import NDArrays, Shape

ModelName = Literal["cnn", "2nn"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)

# name -> shape, in torch ``state_dict`` order (weight before bias, layer by layer).
_LAYOUTS: dict[str, list[tuple[str, Shape]]] = {
    "cnn": [
        ("conv1.weight", (32, 1, 5, 5)),
        ("conv1.bias", (32,)),
        ("conv2.weight", (64, 32, 5, 5)),
        ("conv2.bias", (64,)),
        ("fc1.weight", (512, 3136)),
        ("fc1.bias", (512,)),
        ("fc2.weight", (10, 512)),
        ("fc2.bias", (10,)),
    ],
    "2nn": [
        ("fc1.weight", (200, 784)),
        ("fc1.bias", (200,)),
        ("fc2.weight", (200, 200)),
        ("fc2.bias", (200,)),
        ("fc3.weight", (10, 200)),
        ("fc3.bias", (10,)),
    ],
}


def check_model_name(name: str) -> ModelName:
    if name not in _LAYOUTS:
        raise ConfigError(f"unknown model {name!r}; known: {list(MODEL_NAMES)}", field="model")
    return name  # type: ignore[return-value]


def layout(name: str) -> list[tuple[str, Shape]]:
    """``[(tensor name, shape), ...]`` in the order weights travel and are aggregated."""
    return list(_LAYOUTS[check_model_name(name)])


def tensor_names(name: str) -> list[str]:
    return [n for n, _ in layout(name)]


def num_params(name: str) -> int:
    return sum(math.prod(shape) for _, shape in layout(name))


def init_weights(name: str, seed: int) -> NDArrays:
    """Seeded float32 weights, the same on every machine and torch version.

    He (Kaiming) uniform for weights, ``U(-sqrt(6/fan_in), +sqrt(6/fan_in))``, and
    zero biases. The paper does not state its initialisation; torch's default
    (bound ``1/sqrt(fan_in)``) shrinks activations layer by layer in these ReLU
    networks and measurably slows the first rounds, which is exactly where
    federated runs spend their budget. Draws come from numpy's PCG64, whose
    stream is stable across releases, not from torch's global generator.
    """
    rng = np.random.default_rng(seed)
    out: NDArrays = []
    for tensor, shape in layout(name):
        if tensor.endswith(".weight"):
            bound = math.sqrt(6.0 / math.prod(shape[1:]))  # fan_in = in_channels * kh * kw, or in_features
            out.append(rng.uniform(-bound, bound, size=shape).astype(np.float32))
        else:
            out.append(np.zeros(shape, dtype=np.float32))
    return out
