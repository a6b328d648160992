"""FedAvgM (Hsu, Qi and Brown, 2019, "Measuring the Effects of Non-Identical Data Distribution
for Federated Visual Classification"): FedAvg with server momentum.

The server treats the round's change as a gradient. With ``w`` the global model and
``mean`` the example-weighted mean of the devices' weights (the exact FedAvg sum):

    Δ = w - mean                  the pseudo-gradient
    v ← β v + Δ                   server momentum, β = ``server_momentum``
    w ← w - η v                   η = ``server_lr``

With β = 0 and η = 1 this is FedAvg. The paper's defaults are η = 1 and β = 0.9.
The momentum ``v`` lives in ``StrategyState.arrays`` as ``momentum.<tensor>`` (float64)
and changes only when a round closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from qflare.fl.arrays import NDArrays, check_like
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.spec import WEIGHTS
from qflare.fl.state import StrategyState
from qflare.fl.strategies import _arrays
from qflare.fl.strategies._arrays import F64
from qflare.fl.strategy import RoundInput, Strategy

MOMENTUM = "momentum"


class FedAvgMParams(StrategyParams):
    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(1.0, gt=0, description="Server learning rate η.")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum β.")


def momentum_step(weights: F64, mean: F64, velocity: F64, lr: float, momentum: float) -> tuple[F64, F64]:
    """One tensor's step: ``v' = β v + (w - mean)``, ``w' = w - η v'``; returns ``(w', v')``."""
    velocity = momentum * velocity + (weights - mean)
    return weights - lr * velocity, velocity


@register_strategy
class FedAvgM(Strategy):
    """Server momentum on FedAvg's pseudo-gradient (Hsu et al., 2019)."""

    name = "fedavgm"
    Params: ClassVar[type[StrategyParams]] = FedAvgMParams

    @property
    def params(self) -> FedAvgMParams:
        params = self.job.strategy
        assert isinstance(params, FedAvgMParams)  # checked when the strategy was built
        return params

    def aggregate(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        self._check_owner(state)
        sums = self._sums(round)
        acc = sums.sums[WEIGHTS]
        check_like(global_weights, acc.shapes, acc.names)
        velocity = _arrays.load(state.arrays, MOMENTUM, acc.names, acc.shapes)
        new_w: list[F64] = []
        new_v: list[F64] = []
        for w, mean, v in zip(global_weights, acc.mean(), velocity, strict=True):
            w2, v2 = momentum_step(
                np.asarray(w, np.float64),
                np.asarray(mean, np.float64),
                v,
                self.params.server_lr,
                self.params.server_momentum,
            )
            new_w.append(w2)
            new_v.append(v2)
        arrays = {**state.arrays, **_arrays.store(MOMENTUM, acc.names, new_v)}
        return _arrays.as_float32(new_w), replace(state, round=sums.round, arrays=arrays)
