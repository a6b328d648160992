"""Local training and evaluation on one device's data, on the CPU, with plain SGD as in FedAvg.

The caller owns threading: nothing here calls ``torch.set_num_threads``, so a
fleet simulator can run several devices at one thread each, and a lone device
can use every core. Data is converted to tensors once per call and batches are
contiguous slices of a once-per-epoch permuted copy: no ``DataLoader``, no
worker processes, no per-example Python.

Images may be uint8 (normalised here with ``qflare.ml.data.to_float``) or
float32 already in [0, 1]; passing float32 saves the conversion when the same
client data is trained on every round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from qflare.errors import ConfigError, DatasetError
from qflare.fl.arrays import NDArrays
from qflare.ml.arch import ModelName
from qflare.ml.data import to_float
from qflare.ml.models import as_tensor, build_model, get_weights


@dataclass(frozen=True, slots=True)
class TrainResult:
    """The trained weights (float32, ``state_dict`` order) and what the aggregator weights them by."""

    weights: NDArrays
    num_examples: int
    #: Mean cross-entropy over the examples of the last epoch (without the proximal term).
    loss: float
    #: SGD steps taken (K): ``epochs * ceil(n / batch_size)``, or ``epochs`` for a full batch.
    local_steps: int = 0


def _tensors(images: NDArray[Any], labels: NDArray[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(images) != len(labels) or len(labels) == 0:
        raise DatasetError(f"{len(images)} images with {len(labels)} labels", field="labels")
    pixels = to_float(images) if images.dtype == np.uint8 else images
    if pixels.dtype != np.float32:
        raise DatasetError(f"images must be uint8 or float32, got {images.dtype}", field="images")
    return as_tensor(pixels, np.float32), as_tensor(labels, np.int64)


def train_local(
    model_name: ModelName,
    weights: Sequence[NDArray[Any]],
    images: NDArray[Any],
    labels: NDArray[Any],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    proximal_mu: float = 0.0,
    *,
    anchor: Sequence[NDArray[Any]] | None = None,
    correction: Sequence[NDArray[Any]] | None = None,
) -> TrainResult:
    """Run ``epochs`` of minibatch SGD from ``weights``; ``batch_size=0`` means full batch.

    With ``proximal_mu > 0`` this is FedProx's local solver: the objective gains
    ``proximal_mu/2 * ||w - anchor||^2`` (``anchor`` defaults to ``weights``; Ditto's
    personal model passes the global model). Its gradient, ``proximal_mu * (w - anchor)``,
    is added to the parameter gradients directly, which is exact and avoids
    building a second autograd graph over every parameter each step.
    ``correction`` (``state_dict`` order) is added to every step's gradient as is:
    SCAFFOLD's ``c - c_i``.
    The example order is drawn from ``seed`` alone, so a run is reproducible.
    """
    for key, value, ok in (
        ("epochs", epochs, epochs >= 1),
        ("batch_size", batch_size, batch_size >= 0),
        ("lr", lr, lr > 0),
    ):
        if not ok:
            raise ConfigError(f"out of range: {value!r}", field=key)
    if not proximal_mu >= 0:
        raise ConfigError(f"must be >= 0, got {proximal_mu}", field="proximal_mu")
    x, y = _tensors(images, labels)
    n = len(y)
    step = n if batch_size == 0 else min(batch_size, n)
    model = build_model(model_name, weights=weights)
    model.train()
    params = list(model.parameters())
    # Extra gradient terms, by parameter: the names tie parameters to ``state_dict`` positions.
    position = {name: i for i, name in enumerate(model.state_dict())}
    order_of = [position[name] for name, _ in model.named_parameters()]
    anchors: list[torch.Tensor] = []
    if proximal_mu > 0:
        source = weights if anchor is None else _checked(anchor, weights, "anchor")
        anchors = [as_tensor(np.asarray(source[i]), np.float32) for i in order_of]
    shifts: list[torch.Tensor] = []
    if correction is not None:
        given = _checked(correction, weights, "correction")
        shifts = [as_tensor(np.asarray(given[i]), np.float32) for i in order_of]
    optimiser = torch.optim.SGD(params, lr=lr)
    order = np.random.default_rng(seed)
    epoch_loss = 0.0
    steps = 0
    for _ in range(epochs):
        perm = torch.from_numpy(order.permutation(n))
        xs, ys = x[perm], y[perm]  # one gather per epoch; batches below are views
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, n, step):
            xb, yb = xs[start : start + step], ys[start : start + step]
            optimiser.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()  # type: ignore[no-untyped-call]
            if anchors or shifts:
                with torch.no_grad():
                    for i, p in enumerate(params):
                        assert p.grad is not None
                        if anchors:
                            p.grad.add_(p - anchors[i], alpha=proximal_mu)
                        if shifts:
                            p.grad.add_(shifts[i])
            optimiser.step()
            steps += 1
            # Accumulate as a tensor: calling .item() every step would force a sync for no gain.
            total += loss.detach().double() * len(yb)
        epoch_loss = float(total) / n
    return TrainResult(weights=get_weights(model), num_examples=n, loss=epoch_loss, local_steps=steps)


def _checked(
    arrays: Sequence[NDArray[Any]], like: Sequence[NDArray[Any]], field: str
) -> Sequence[NDArray[Any]]:
    """``arrays`` if it has the shapes of ``like``, else ``ConfigError`` naming the first bad position."""
    if len(arrays) != len(like):
        raise ConfigError(f"{len(arrays)} tensors for a model of {len(like)}", field=field)
    for i, (a, w) in enumerate(zip(arrays, like, strict=True)):
        if np.shape(a) != np.shape(w):
            raise ConfigError(f"shape {np.shape(a)} != the model's {np.shape(w)}", field=f"{field}[{i}]")
    return arrays


def evaluate(
    model_name: ModelName,
    weights: Sequence[NDArray[Any]],
    images: NDArray[Any],
    labels: NDArray[Any],
    batch_size: int = 1000,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``weights`` on the given examples."""
    if batch_size < 1:
        raise ConfigError(f"must be >= 1, got {batch_size}", field="batch_size")
    x, y = _tensors(images, labels)
    model = build_model(model_name, weights=weights)
    model.eval()
    loss_sum = 0.0
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size])
            yb = y[start : start + batch_size]
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / len(y), correct / len(y)
