"""Local SGD of many devices at once: their models stacked along a device dimension.

``qflare.ml.train.train_local`` trains one device. Here the selected devices'
parameters are stacked (``[D, *shape]``) and every SGD step of all of them is one
``torch.func.vmap`` of ``torch.func.grad`` over ``functional_call``: one batched
kernel per layer instead of ``D`` small ones, on the GPU when there is one.

Each device follows exactly the recipe of ``train_local``: its example order per
epoch from ``numpy.random.default_rng(seed)``, contiguous batches of that order
(the last one shorter), mean cross-entropy per batch, plain SGD and FedProx's
proximal gradient ``mu * (w - w_global)``. Devices with different example counts
(or a full batch, ``batch_size=0``) are padded to the largest batch and the
largest number of steps, with a mask: a padded example adds nothing to its
device's loss, and a device whose epoch has ended takes no step.
The result equals ``train_local`` up to float rounding (the kernels differ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch.func import functional_call, grad_and_value, vmap

from qflare.errors import ConfigError
from qflare.fl.arrays import NDArrays
from qflare.ml.arch import ModelName
from qflare.ml.models import build_model


@dataclass(frozen=True, slots=True)
class BatchedResult:
    """One device's trained weights (float32, ``state_dict`` order), examples, last-epoch loss, steps."""

    weights: NDArrays
    num_examples: int
    loss: float
    local_steps: int


def pick_device() -> torch.device:
    """CUDA when torch sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_batched(
    model_name: ModelName,
    weights: Sequence[NDArray[Any]],
    images: torch.Tensor,
    labels: torch.Tensor,
    index: Sequence[NDArray[np.int64]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seeds: Sequence[int],
    proximal_mu: float = 0.0,
    correction: Sequence[Sequence[NDArray[Any]]] | None = None,
) -> list[BatchedResult]:
    """Train ``len(index)`` devices from the same ``weights``; device ``d`` owns ``images[index[d]]``.

    ``images`` (float32, already in [0, 1]) and ``labels`` (int64) hold the whole
    training split on the target device, so a round copies only index arrays.
    ``correction`` (SCAFFOLD's ``c - c_i``, per device, in ``weights`` order) is added to
    every gradient of that device.
    """
    if epochs < 1 or batch_size < 0 or not lr > 0 or not proximal_mu >= 0:
        raise ConfigError("epochs >= 1, batch_size >= 0, lr > 0, proximal_mu >= 0", field="config")
    if len(index) != len(seeds) or not index:
        raise ConfigError(f"{len(index)} devices with {len(seeds)} seeds", field="seeds")
    dev = images.device
    sizes = [len(i) for i in index]
    if min(sizes) < 1:
        raise ConfigError("a device has no training examples", field="index")
    num = len(sizes)
    steps_per = [n if batch_size == 0 else min(batch_size, n) for n in sizes]
    epoch_steps = [math.ceil(n / s) for n, s in zip(sizes, steps_per, strict=True)]
    width, most = max(steps_per), max(epoch_steps)
    n_t = torch.tensor(sizes, device=dev)
    step_t = torch.tensor(steps_per, device=dev)
    lane = torch.arange(width, device=dev)
    # Each device's global example indices, padded to the largest shard.
    gidx = torch.zeros((num, max(sizes)), dtype=torch.int64)
    for d, idx in enumerate(index):
        gidx[d, : len(idx)] = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    gidx = gidx.to(dev)

    model = build_model(model_name, weights=weights).to(dev)
    names = [n for n, _ in model.named_parameters()]
    start = {n: p.detach() for n, p in model.named_parameters()}
    params = {n: p.unsqueeze(0).repeat(num, *([1] * p.dim())).contiguous() for n, p in start.items()}
    anchor = start if proximal_mu > 0 else {}
    shift: dict[str, torch.Tensor] = {}
    if correction is not None:
        if len(correction) != num:
            raise ConfigError(f"{len(correction)} corrections for {num} devices", field="correction")
        for k, n in enumerate(names):
            shift[n] = torch.from_numpy(
                np.stack([np.asarray(c[k], dtype=np.float32) for c in correction])
            ).to(dev)

    def device_loss(
        p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, count: torch.Tensor
    ) -> torch.Tensor:
        logits = functional_call(model, p, (x,))
        per_example = F.cross_entropy(logits, y, reduction="none")
        return (per_example * mask).sum() / count.clamp(min=1)

    step_fn = vmap(grad_and_value(device_loss))
    rngs = [np.random.default_rng(s) for s in seeds]
    losses = torch.zeros(num, dtype=torch.float64, device=dev)
    for _ in range(epochs):
        perm = torch.zeros((num, max(sizes)), dtype=torch.int64)
        for d, rng in enumerate(rngs):
            perm[d, : sizes[d]] = torch.from_numpy(rng.permutation(sizes[d]))
        order = gidx.gather(1, perm.to(dev))  # this epoch's examples, in each device's order
        losses.zero_()
        for s in range(most):
            pos = s * step_t[:, None] + lane[None, :]
            valid = (lane[None, :] < step_t[:, None]) & (pos < n_t[:, None])
            picked = order.gather(1, torch.where(valid, pos, 0))
            mask = valid.to(torch.float32)
            count = mask.sum(dim=1)
            grads, loss = step_fn(params, images[picked], labels[picked], mask, count)
            active = (count > 0).to(torch.float32)
            rate = active * lr  # a device whose epoch has ended steps by 0
            with torch.no_grad():
                for n in names:
                    g = grads[n]
                    if anchor:
                        g = g.add(params[n] - anchor[n], alpha=proximal_mu)
                    if shift:
                        g = g + shift[n]
                    # In place: w <- w - lr * g, as torch.optim.SGD steps.
                    params[n].addcmul_(rate.view(-1, *([1] * (g.dim() - 1))), g, value=-1)
            losses += loss.detach().double() * count.double()
    host = {n: params[n].detach().cpu().numpy() for n in names}
    out = []
    for d in range(num):
        trained = [np.array(host[n][d], dtype=np.float32) for n in names]
        out.append(BatchedResult(trained, sizes[d], float(losses[d]) / sizes[d], epochs * epoch_steps[d]))
    return out
