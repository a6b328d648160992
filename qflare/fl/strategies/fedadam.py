"""FedAdam (Reddi et al., 2021, "Adaptive Federated Optimization", Algorithm 2): Adam on the server.

Second moment: ``v ← β2 v + (1 - β2) Δ²``, an exponential average of the squared
pseudo-gradient. Everything else is ``qflare.fl.strategies.fedopt``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.strategies._arrays import F64
from qflare.fl.strategies.fedopt import FedOpt, FedOptBeta2Params


class FedAdamParams(FedOptBeta2Params):
    name: Literal["fedadam"] = "fedadam"


def adam_second_moment(v: F64, delta: F64, beta2: float) -> F64:
    """``β2 v + (1 - β2) Δ²``."""
    return beta2 * v + (1.0 - beta2) * delta * delta


@register_strategy
class FedAdam(FedOpt):
    """Adam as the server optimiser (Reddi et al., 2021)."""

    name = "fedadam"
    Params: ClassVar[type[StrategyParams]] = FedAdamParams

    def second_moment(self, v: F64, delta: F64) -> F64:
        params = self.params
        assert isinstance(params, FedAdamParams)
        return adam_second_moment(v, delta, params.beta2)
