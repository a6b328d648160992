"""FedAdagrad (Reddi et al., 2021, "Adaptive Federated Optimization", Algorithm 2): Adagrad on the
server.

Second moment: ``v ← v + Δ²``, the running total of squared pseudo-gradients, so the
step only shrinks. It has no β2. Everything else is ``qflare.fl.strategies.fedopt``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.strategies._arrays import F64
from qflare.fl.strategies.fedopt import FedOpt, FedOptParams


class FedAdagradParams(FedOptParams):
    name: Literal["fedadagrad"] = "fedadagrad"


def adagrad_second_moment(v: F64, delta: F64) -> F64:
    """``v + Δ²``."""
    return v + delta * delta


@register_strategy
class FedAdagrad(FedOpt):
    """Adagrad as the server optimiser (Reddi et al., 2021)."""

    name = "fedadagrad"
    Params: ClassVar[type[StrategyParams]] = FedAdagradParams

    def second_moment(self, v: F64, delta: F64) -> F64:
        return adagrad_second_moment(v, delta)
