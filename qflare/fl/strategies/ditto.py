"""Ditto (Li, Hu, Beirami and Smith, 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization"): FedAvg for the global model, plus a personal model on every device.

Each selected device trains the global model as in FedAvg and, besides it, its own
personal model ``v`` (kept in its local state) on

    min_v  F_k(v) + λ/2 ‖v - w_global‖²

so ``v`` fits the device's data while staying near the shared model. λ trades one for
the other (λ = 0: local training only; large λ: the global model). The server side is
exactly FedAvg; the only change is λ in the devices' instructions (``ditto_lambda``).
Devices evaluate ``v`` on their own test split and report ``personal_accuracy``,
``personal_loss`` and ``personal_examples``. The paper tunes λ in {0.01, 0.1, 1, 2};
the default here is 0.1.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from qflare.fl.job import StrategyParams, TrainConfig
from qflare.fl.registry import register_strategy
from qflare.fl.strategies.fedavg import FedAvg


class DittoParams(StrategyParams):
    name: Literal["ditto"] = "ditto"
    lam: float = Field(0.1, gt=0, description="λ: pull of each personal model toward the global one.")


@register_strategy
class Ditto(FedAvg):
    """FedAvg; each device also trains a personal model pulled toward it (Li et al., 2021)."""

    name = "ditto"
    Params: ClassVar[type[StrategyParams]] = DittoParams

    def train_config(self, round: int) -> TrainConfig:
        params = self.job.strategy
        assert isinstance(params, DittoParams)  # checked when the strategy was built
        return super().train_config(round).model_copy(update={"ditto_lambda": params.lam})
