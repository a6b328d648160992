"""Data attacks: poisoned training examples for an attacker device, and a backdoor's success rate."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.attacks.registry import Attack

NUM_CLASSES = 10


def flip_labels(labels: NDArray[Any], classes: int = NUM_CLASSES) -> NDArray[np.int64]:
    """y → (classes − 1) − y: every example taught as another class."""
    return (classes - 1 - np.asarray(labels, dtype=np.int64)).astype(np.int64)


def add_trigger(images: NDArray[np.uint8], size: int = 4, value: int = 255) -> NDArray[np.uint8]:
    """A copy of ``images`` (N × H × W) with a ``size`` × ``size`` square of ``value`` bottom right.

    The corner is background in MNIST and Fashion-MNIST, so the square is a pattern the
    honest data never shows.
    """
    out = np.array(images, dtype=np.uint8, copy=True)
    out[..., -size:, -size:] = value
    return out


def poison_backdoor(
    images: NDArray[np.uint8],
    labels: NDArray[Any],
    rng: np.random.Generator,
    *,
    fraction: float,
    target: int,
    size: int,
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Copies where ``round(fraction * N)`` examples, drawn by ``rng``, carry the trigger and ``target``."""
    out_images = np.array(images, dtype=np.uint8, copy=True)
    out_labels = np.array(labels, dtype=np.int64, copy=True)
    count = round(fraction * len(out_labels))
    chosen = rng.choice(len(out_labels), size=count, replace=False)
    out_images[chosen] = add_trigger(out_images[chosen], size)
    out_labels[chosen] = target
    return out_images, out_labels


def poison_data(
    attack: Attack, images: NDArray[np.uint8], labels: NDArray[Any], rng: np.random.Generator
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """The attacker's training data under ``attack`` (unchanged for a model attack)."""
    if attack.name == "label_flip":
        return images, flip_labels(labels)
    if attack.name == "backdoor":
        return poison_backdoor(
            images,
            labels,
            rng,
            fraction=attack["fraction"],
            target=int(attack["target"]),
            size=int(attack["size"]),
        )
    return images, np.asarray(labels, dtype=np.int64)


def triggered_test_set(
    images: NDArray[np.uint8], labels: NDArray[Any], *, target: int, size: int
) -> NDArray[np.uint8]:
    """The test images whose true label is not ``target``, with the trigger added."""
    keep = np.asarray(labels) != target
    return add_trigger(images[keep], size)


def attack_success_rate(
    model: str,
    weights: list[NDArray[Any]],
    images: NDArray[np.uint8],
    labels: NDArray[Any],
    *,
    target: int,
    size: int,
    batch: int = 1000,
) -> float:
    """Share of triggered test images (true label ≠ ``target``) a built-in model classifies as ``target``."""
    import torch

    from qflare.ml.data import to_float
    from qflare.ml.models import build_model

    triggered = triggered_test_set(images, labels, target=target, size=size)
    if len(triggered) == 0:
        return 0.0
    net = build_model(model, weights=weights).eval()  # type: ignore[arg-type]
    hits = 0
    with torch.inference_mode():
        for start in range(0, len(triggered), batch):
            x = torch.from_numpy(to_float(triggered[start : start + batch]))
            hits += int((net(x).argmax(dim=1) == target).sum())
    return hits / len(triggered)
