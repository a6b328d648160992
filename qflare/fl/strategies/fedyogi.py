"""FedYogi (Reddi et al., 2021, "Adaptive Federated Optimization", Algorithm 2): Yogi on the server.

Second moment: ``v ← v - (1 - β2) Δ² sign(v - Δ²)``. Unlike Adam's average, ``v``
moves toward ``Δ²`` by an additive step, so it grows or shrinks slowly and a single
large pseudo-gradient does not suddenly shrink the step (Zaheer et al., 2018).
Everything else is ``qflare.fl.strategies.fedopt``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.strategies._arrays import F64
from qflare.fl.strategies.fedopt import FedOpt, FedOptBeta2Params


class FedYogiParams(FedOptBeta2Params):
    name: Literal["fedyogi"] = "fedyogi"


def yogi_second_moment(v: F64, delta: F64, beta2: float) -> F64:
    """``v - (1 - β2) Δ² sign(v - Δ²)``."""
    square = delta * delta
    return v - (1.0 - beta2) * square * np.sign(v - square)


@register_strategy
class FedYogi(FedOpt):
    """Yogi as the server optimiser (Reddi et al., 2021)."""

    name = "fedyogi"
    Params: ClassVar[type[StrategyParams]] = FedYogiParams

    def second_moment(self, v: F64, delta: F64) -> F64:
        params = self.params
        assert isinstance(params, FedYogiParams)
        return yogi_second_moment(v, delta, params.beta2)
