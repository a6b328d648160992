"""Device-side local solvers around ``train_local``: FedAvg/FedProx, SCAFFOLD, Ditto and FedPer.

``solve`` is one device's round as a pure function: the received global model
(and the server's groups), the device's data, the round's settings and the
device's own state go in; the weights and groups to send, the metrics and the
device's next state come out. Nothing here touches a disk or the network, so the
device runtime (``edge``) and the in-process simulator run exactly the same maths.

- FedProx: ``proximal_mu`` pulls the local model towards the received one.
- SCAFFOLD, option II (Karimireddy et al. 2020): every step's gradient is
  corrected by ``c - c_i``; after ``K`` steps of learning rate ``lr`` from ``x`` to
  ``y`` the device's control becomes ``c_i+ = c_i - c + (x - y) / (K lr)`` and it
  sends ``dc = c_i+ - c_i``.
- Ditto (Li et al. 2021): after the usual local training of the global copy, the
  personal model ``v`` (the stored one, or the global model the first time) trains
  for the same epochs on ``loss + lam/2 ||v - w_global||^2``.
- FedPer (Arivazhagan et al. 2019): tensors whose names fullmatch ``personal`` are
  replaced by the device's own before training, trained, kept, and not sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import ConfigError
from qflare.fl.arrays import NDArrays
from qflare.fl.spec import CONTROL, WEIGHTS
from qflare.ml.arch import ModelName

#: Ditto's personal model trains on its own example order, not the global copy's.
_DITTO_SEED_OFFSET = 0x5EED


@dataclass(frozen=True, slots=True)
class SolverConfig:
    """The local solver's part of a round's ``TrainConfig``."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    proximal_mu: float = 0.0
    scaffold: bool = False
    ditto_lambda: float = 0.0
    personal: str = ""

    @classmethod
    def of(cls, config: Any, seed: int) -> SolverConfig:
        """From a ``TrainConfig`` (or anything with its attributes), with the device's own ``seed``."""
        return cls(
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=seed,
            proximal_mu=config.proximal_mu,
            scaffold=config.scaffold,
            ditto_lambda=config.ditto_lambda,
            personal=config.personal,
        )


@dataclass(frozen=True, slots=True)
class SolverState:
    """What a device keeps between rounds of one job (all float32, model layout order)."""

    #: The last round this state was computed in (0: none yet). A device never trains a round twice.
    round: int = 0
    #: SCAFFOLD's c_i (None: zeros, never trained).
    control: NDArrays | None = None
    #: Ditto's personal model v.
    ditto: NDArrays | None = None
    #: FedPer's personal tensors, by name.
    personal: Mapping[str, NDArray[np.float32]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SolveResult:
    #: The tensors to send by group: ``weights`` (only the shared ones under FedPer) and e.g. ``control``.
    groups: dict[str, NDArrays]
    #: The names of ``groups["weights"]`` (the model's names less FedPer's personal ones).
    names: tuple[str, ...]
    num_examples: int
    metrics: dict[str, float]
    #: The device's state to commit when (and only when) the update is sent.
    state: SolverState
    #: The model this device would use itself (Ditto's v, FedPer's global-plus-own), or None.
    personal_model: NDArrays | None = None
    #: Every trained tensor in the model's layout, personal ones included (what a device app returns).
    weights: NDArrays = field(default_factory=list)


def personal_mask(names: Sequence[str], pattern: str) -> list[bool]:
    """Which tensors are personal: their name fullmatches ``pattern`` (none for an empty pattern)."""
    if not pattern:
        return [False] * len(names)
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"not a regular expression: {exc}", field="config.personal") from None
    return [rx.fullmatch(n) is not None for n in names]


def scaffold_control(
    c: Sequence[NDArray[Any]],
    c_i: Sequence[NDArray[Any]],
    x: Sequence[NDArray[Any]],
    y: Sequence[NDArray[Any]],
    steps: int,
    lr: float,
) -> tuple[NDArrays, NDArrays]:
    """SCAFFOLD option II: ``(c_i+, dc)`` with ``c_i+ = c_i - c + (x - y)/(K lr)``, ``dc = c_i+ - c_i``.

    Computed in float64 and rounded once to float32, so ``dc`` is the difference the
    server will add, not the difference of two rounded values.
    """
    if steps < 1:
        raise ConfigError(f"must be >= 1, got {steps}", field="local_steps")
    scale = 1.0 / (steps * lr)
    new: NDArrays = []
    delta: NDArrays = []
    for ck, cik, xk, yk in zip(c, c_i, x, y, strict=True):
        d = -np.asarray(ck, np.float64) + (np.asarray(xk, np.float64) - np.asarray(yk, np.float64)) * scale
        new.append((np.asarray(cik, np.float64) + d).astype(np.float32))
        delta.append(d.astype(np.float32))
    return new, delta


def solve(
    model: ModelName,
    names: Sequence[str],
    weights: Sequence[NDArray[Any]],
    server_groups: Mapping[str, Sequence[NDArray[Any]]],
    images: NDArray[Any],
    labels: NDArray[Any],
    cfg: SolverConfig,
    state: SolverState,
    round: int,
) -> SolveResult:
    """One device's round (see the module docstring); ``server_groups`` are in the model's order."""
    # torch is imported only where training runs: the device runtime imports this module for
    # ``personal_mask`` and the state types even when it trains with a user's app.
    from qflare.ml.train import train_local

    if len(names) != len(weights):
        raise ConfigError(f"{len(names)} names for {len(weights)} tensors", field="names")
    mask = personal_mask(names, cfg.personal)
    start = [np.asarray(w, np.float32) for w in weights]
    for i, name in enumerate(names):
        if mask[i] and name in state.personal:
            start[i] = np.asarray(state.personal[name], np.float32)
    correction: NDArrays | None = None
    c: NDArrays = []
    c_i: NDArrays = []
    if cfg.scaffold:
        zeros = [np.zeros_like(w) for w in start]
        c = [np.asarray(a, np.float32) for a in server_groups.get(CONTROL, zeros)]
        c_i = list(state.control) if state.control is not None else zeros
        correction = [a - b for a, b in zip(c, c_i, strict=True)]
    trained = train_local(
        model,
        start,
        images,
        labels,
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.seed,
        proximal_mu=cfg.proximal_mu,
        correction=correction,
    )
    # The mu this device trained with goes back with its update, so anyone can see what arrived.
    metrics = {
        "loss": float(trained.loss),
        "local_steps": float(trained.local_steps),
        "proximal_mu": float(cfg.proximal_mu),
    }
    shared = tuple(n for n, m in zip(names, mask, strict=True) if not m)
    groups: dict[str, NDArrays] = {WEIGHTS: [w for w, m in zip(trained.weights, mask, strict=True) if not m]}
    control = state.control
    if cfg.scaffold:
        control, groups[CONTROL] = scaffold_control(
            c, c_i, start, trained.weights, trained.local_steps, cfg.lr
        )
    kept = {n: w for n, w, m in zip(names, trained.weights, mask, strict=True) if m}
    personal_model: NDArrays | None = trained.weights if kept else None
    ditto = state.ditto
    if cfg.ditto_lambda > 0:
        # v's anchor is the global model as received, not the copy just trained.
        v0 = list(state.ditto) if state.ditto is not None else start
        ditto = train_local(
            model,
            v0,
            images,
            labels,
            cfg.epochs,
            cfg.batch_size,
            cfg.lr,
            cfg.seed + _DITTO_SEED_OFFSET,
            proximal_mu=cfg.ditto_lambda,
            anchor=[np.asarray(w, np.float32) for w in weights],
        ).weights
        personal_model = ditto
    return SolveResult(
        groups=groups,
        names=shared,
        num_examples=trained.num_examples,
        metrics=metrics,
        state=SolverState(round=round, control=control, ditto=ditto, personal={**state.personal, **kept}),
        personal_model=personal_model,
        weights=trained.weights,
    )


def personal_metrics(
    model: ModelName, personal: Sequence[NDArray[Any]], images: NDArray[Any], labels: NDArray[Any]
) -> dict[str, float]:
    """``personal_loss``, ``personal_accuracy`` and ``personal_examples`` of a personal model."""
    from qflare.ml.train import evaluate

    loss, accuracy = evaluate(model, personal, images, labels)
    return {
        "personal_loss": float(loss),
        "personal_accuracy": float(accuracy),
        "personal_examples": float(len(labels)),
    }
