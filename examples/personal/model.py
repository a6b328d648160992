"""A two-part model: a shared body that the federation averages, and a personal head kept on the device."""

from __future__ import annotations

import torch
from torch import nn

#: The tensors that never leave the device (the head); every other tensor is federated.
PERSONAL = ("head.weight", "head.bias")


class BodyHead(nn.Module):
    """784 -> 128 (ReLU) body, then a 128 -> 10 head: 101,770 parameters, 1,290 of them personal."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Linear(28 * 28, 128)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x.flatten(1))))  # type: ignore[no-any-return]
