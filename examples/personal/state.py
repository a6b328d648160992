"""The device's personal layers on disk, in its state directory (``task.context.state_dir``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from examples.personal.model import PERSONAL

HEAD_FILE = "personal-head.safetensors"


def load_head(state_dir: Path) -> dict[str, torch.Tensor] | None:
    """The personal tensors this device saved, or None before its first training round."""
    path = state_dir / HEAD_FILE
    return load_file(path) if path.exists() else None


def save_head(state: dict[str, torch.Tensor], state_dir: Path) -> None:
    tmp = state_dir / f"{HEAD_FILE}.tmp"
    save_file({n: state[n].contiguous() for n in PERSONAL}, tmp)
    os.replace(tmp, state_dir / HEAD_FILE)  # atomic: a crash leaves the old head or the new one
