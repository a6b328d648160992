"""The FedAvg-paper models as torch modules, and weights as named numpy arrays.

Weights cross process boundaries as ``list[ndarray]`` (float32, ``state_dict``
order, names from ``qflare.ml.arch.tensor_names``) so the protocol can ship them
as named tensors and the aggregator never needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from qflare.errors import ConfigError, TensorError
from qflare.fl.arrays import NDArrays
from qflare.ml.arch import ModelName, check_model_name, init_weights, layout


class CNN(nn.Module):
    """McMahan et al. (2017) MNIST CNN: 1,663,370 parameters."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2, device=device)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2, device=device)
        self.fc1 = nn.Linear(7 * 7 * 64, 512, device=device)
        self.fc2 = nn.Linear(512, 10, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        out: torch.Tensor = self.fc2(x)
        return out


class TwoNN(nn.Module):
    """McMahan et al. (2017) 2NN: two hidden layers of 200 units, 199,210 parameters."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 200, device=device)
        self.fc2 = nn.Linear(200, 200, device=device)
        self.fc3 = nn.Linear(200, 10, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.reshape(-1, 784)))
        x = torch.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


_CLASSES: dict[str, type[CNN | TwoNN]] = {"cnn": CNN, "2nn": TwoNN}


def build_model(name: ModelName, seed: int = 0, weights: Sequence[NDArray[Any]] | None = None) -> nn.Module:
    """A CPU model holding ``weights``, or ``init_weights(name, seed)`` when none are given.

    The module is created on the meta device and then materialised, so torch's own
    random initialisation never runs: it would be wasted work, and would advance
    torch's global generator behind the caller's back.
    """
    model = _CLASSES[check_model_name(name)](device="meta").to_empty(device="cpu")
    set_weights(model, init_weights(name, seed) if weights is None else weights)
    return model


def get_weights(model: nn.Module) -> NDArrays:
    """Copies of the parameters as float32 arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def named_weights(model: nn.Module) -> list[tuple[str, NDArray[np.float32]]]:
    return [
        (k, t.detach().cpu().numpy().astype(np.float32, copy=True)) for k, t in model.state_dict().items()
    ]


def set_weights(model: nn.Module, weights: Sequence[NDArray[Any]]) -> None:
    """Copy ``weights`` (``state_dict`` order) into ``model``; the caller's arrays are not aliased."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise TensorError(f"model has {len(state)} tensors, got {len(weights)}", field="weights")
    with torch.no_grad():
        for (key, target), array in zip(state.items(), weights, strict=True):
            if tuple(array.shape) != tuple(target.shape):
                raise TensorError(f"shape {tuple(array.shape)} != {tuple(target.shape)}", field=key)
            target.copy_(as_tensor(array, np.float32))


def as_tensor(array: NDArray[Any], dtype: type[np.generic]) -> torch.Tensor:
    """A torch view of ``array`` as ``dtype``, copying only when needed.

    Arrays decoded from the wire are read-only views into the received record;
    torch cannot wrap those safely, so they are copied once here.
    """
    converted = np.ascontiguousarray(array, dtype=dtype)
    if not converted.flags.writeable:
        converted = converted.copy()
    return torch.from_numpy(converted)


def check_layout(model: nn.Module, name: ModelName) -> None:
    """Assert the torch module matches the numpy-side table (names, shapes, order)."""
    actual = [(k, tuple(t.shape)) for k, t in model.state_dict().items()]
    if actual != layout(name):
        raise ConfigError(f"torch layout {actual} differs from the declared one", field="model")
