"""Multinomial logistic regression (softmax regression) in plain numpy.

The model is two named float32 arrays, ``linear.weight`` (classes x features) and
``linear.bias`` (classes), which is all QFLARE needs to aggregate it. The
gradient of the mean cross-entropy is written out by hand: for logits
``z = x W^T + b`` and softmax ``p``, it is ``(p - onehot(y))^T x / n`` for ``W``
and the column mean of ``p - onehot(y)`` for ``b``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

Params = dict[str, NDArray[np.float32]]
WEIGHT, BIAS = "linear.weight", "linear.bias"


def initial(num_features: int, num_classes: int, seed: int) -> Params:
    rng = np.random.default_rng(seed)
    return {
        WEIGHT: (rng.standard_normal((num_classes, num_features)) * 0.01).astype(np.float32),
        BIAS: np.zeros(num_classes, dtype=np.float32),
    }


def _probabilities(params: Params, x: NDArray[np.float32]) -> NDArray[np.float64]:
    z = x.astype(np.float64) @ params[WEIGHT].T.astype(np.float64) + params[BIAS]
    z -= z.max(axis=1, keepdims=True)  # softmax is shift-invariant; this keeps exp finite
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def loss_and_accuracy(params: Params, x: NDArray[np.float32], y: NDArray[Any]) -> tuple[float, float]:
    p = _probabilities(params, x)
    loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
    return loss, float(np.mean(p.argmax(axis=1) == y))


def sgd(
    params: Params,
    x: NDArray[np.float32],
    y: NDArray[Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> tuple[Params, float]:
    """Minibatch SGD from ``params`` (not modified); returns the new params and the last epoch's mean loss."""
    w, b = params[WEIGHT].astype(np.float64), params[BIAS].astype(np.float64)
    rng = np.random.default_rng(seed)
    batch = batch_size or len(y)  # 0: the whole local dataset per step
    total = 0.0
    for _ in range(epochs):
        total = 0.0
        for idx in np.array_split(rng.permutation(len(y)), max(1, -(-len(y) // batch))):
            xb = x[idx].astype(np.float64)
            z = xb @ w.T + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            total -= float(np.sum(np.log(p[np.arange(len(idx)), y[idx]] + 1e-12)))
            p[np.arange(len(idx)), y[idx]] -= 1.0  # p - onehot(y)
            w -= lr * (p.T @ xb) / len(idx)
            b -= lr * p.mean(axis=0)
    return {WEIGHT: w.astype(np.float32), BIAS: b.astype(np.float32)}, total / len(y)
