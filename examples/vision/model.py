"""The user's model: a small CNN for 28x28 grey images, and its weights as named numpy arrays.

Nothing here is QFLARE's: this is the kind of module a team already has. The two
helpers at the bottom are the whole bridge to the platform, which speaks named
float32 numpy arrays in the order of the imported ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn


class SmallCNN(nn.Module):
    """conv 5x5 (16) -> pool -> conv 5x5 (32) -> pool -> fc 64 -> fc 10: 114,314 parameters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)  # type: ignore[no-any-return]


def load_arrays(model: nn.Module, names: Sequence[str], weights: Sequence[NDArray[Any]]) -> None:
    """Put the global model's tensors into ``model``, matched by name (every one must be there)."""
    # The received arrays may be read-only views of the message: copy before torch owns them.
    state = {
        name: torch.from_numpy(np.array(w, dtype=np.float32)) for name, w in zip(names, weights, strict=True)
    }
    model.load_state_dict(state, strict=True)


def arrays_of(model: nn.Module, names: Sequence[str]) -> list[NDArray[np.float32]]:
    """The model's tensors as float32 numpy arrays, in the order of ``names`` (the job's layout)."""
    state = model.state_dict()
    return [state[name].detach().cpu().numpy().astype(np.float32, copy=True) for name in names]
