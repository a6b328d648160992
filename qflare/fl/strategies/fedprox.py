"""FedProx (Li et al., 2020): FedAvg plus a proximal term on the device.

Devices minimise ``loss + mu/2 * ||w - w_global||^2``, which keeps heterogeneous
clients from drifting far from the global model. The server side is exactly
FedAvg, so the only change is the proximal coefficient in the devices' instructions.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from qflare.fl.job import StrategyParams, TrainConfig
from qflare.fl.registry import register_strategy
from qflare.fl.strategies.fedavg import FedAvg


class FedProxParams(StrategyParams):
    name: Literal["fedprox"] = "fedprox"
    #: μ, the proximal coefficient. This is the one default of it: the CLI and the demo
    #: leave it out unless told, and devices are always sent the job's value.
    proximal_mu: float = Field(0.01, ge=0, description="μ, the proximal coefficient devices apply.")


@register_strategy
class FedProx(FedAvg):
    name = "fedprox"
    Params: ClassVar[type[StrategyParams]] = FedProxParams

    @property
    def proximal_mu(self) -> float:
        params = self.job.strategy
        assert isinstance(params, FedProxParams)  # checked when the strategy was built
        return params.proximal_mu

    def train_config(self, round: int) -> TrainConfig:
        return super().train_config(round).model_copy(update={"proximal_mu": self.proximal_mu})
