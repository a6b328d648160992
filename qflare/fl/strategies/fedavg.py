"""FedAvg (McMahan et al., 2017): the new global model is the example-weighted mean of the updates.

Devices run ``epochs`` of plain SGD with batch ``batch_size`` and step ``lr`` from
the current global weights; the server replaces the global model with
``sum(n_k * w_k) / sum(n_k)``. The sum is the exact fixed-point one from
``qflare.fl.accumulate``, so it is the same whatever order updates arrive in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from numpy.typing import NDArray

from qflare.fl.arrays import NDArrays, check_like
from qflare.fl.strategy import Strategy, StrategyState, TrainConfig


class FedAvg(Strategy):
    name = "fedavg"

    def configure_round(self, state: StrategyState, round: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)

    def aggregate(
        self, state: StrategyState, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        acc = self._running(state)
        # The global weights are unused by the mean, but a mismatch means the caller mixed up models.
        check_like(global_weights, acc.shapes, acc.names)
        return acc.mean(), replace(state, accumulator=None)
