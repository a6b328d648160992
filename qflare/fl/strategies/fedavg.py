"""FedAvg (McMahan et al., 2017): the new global model is the example-weighted mean of the updates.

Devices run ``epochs`` of plain SGD with batch ``batch_size`` and step ``lr`` from
the current global weights; the server replaces the global model with
``sum(n_k * w_k) / sum(n_k)``. The sum is the exact fixed-point one from
``qflare.fl.accumulate``, so it is the same whatever order updates arrive in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

from numpy.typing import NDArray

from qflare.fl.arrays import NDArrays, check_like
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.spec import WEIGHTS
from qflare.fl.state import StrategyState
from qflare.fl.strategy import RoundInput, Strategy


class FedAvgParams(StrategyParams):
    """FedAvg has no parameters of its own: local training is the job's (epochs, batch_size, lr)."""

    name: Literal["fedavg"] = "fedavg"


@register_strategy
class FedAvg(Strategy):
    name = "fedavg"
    Params: ClassVar[type[StrategyParams]] = FedAvgParams

    def aggregate(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        self._check_owner(state)
        acc = self._sums(round).sums[WEIGHTS]
        # The global weights are unused by the mean, but a mismatch means the caller mixed up models.
        check_like(global_weights, acc.shapes, acc.names)
        return acc.mean(), replace(state, round=self._sums(round).round)
