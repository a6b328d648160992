"""FedProx (Li et al., 2020): FedAvg plus a proximal term on the device.

Devices minimise ``loss + mu/2 * ||w - w_global||^2``, which keeps heterogeneous
clients from drifting far from the global model. The server side is exactly
FedAvg, so the only change is one extra entry in the task config.
"""

from __future__ import annotations

from typing import Any

from qflare.errors import ConfigError
from qflare.fl.strategies.fedavg import FedAvg
from qflare.fl.strategy import StrategyState, TrainConfig


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, *, prox_mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not prox_mu >= 0:
            raise ConfigError(f"must be >= 0, got {prox_mu!r}", field="prox_mu")
        self.prox_mu = float(prox_mu)

    def configure_round(self, state: StrategyState, round: int) -> TrainConfig:
        config = super().configure_round(state, round)
        return TrainConfig(
            config.epochs, config.batch_size, config.lr, {**config.extra, "prox_mu": self.prox_mu}
        )
