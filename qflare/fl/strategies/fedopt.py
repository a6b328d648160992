"""FedOpt (Reddi et al., 2021, "Adaptive Federated Optimization", Algorithm 2): the base of
FedAdam, FedYogi and FedAdagrad.

Devices run the job's local SGD, as in FedAvg. The server treats the round's change as
a (negative) gradient and applies an adaptive optimiser to it. With ``w`` the global
model and ``mean`` the example-weighted mean of the devices' weights:

    Δ = mean - w                                the pseudo-gradient (a descent direction)
    m ← β1 m + (1 - β1) Δ                       first moment
    v ← second_moment(v, Δ)                     the variant's rule (see its module)
    w ← w + η m / (sqrt(v) + τ)                 η = ``server_lr``, τ = ``tau``

Initialisation as in the paper: ``m = 0`` and ``v = τ²`` (Algorithm 2 asks for
``v_{-1} ≥ τ²``); no bias correction. Paper defaults: η = 1e-2 (tuned per task in the
paper), β1 = 0.9, β2 = 0.99, τ = 1e-3. ``m`` and ``v`` live in ``StrategyState.arrays``
as ``m.<tensor>`` and ``v.<tensor>`` (float64) and change only when a round closes.

A variant subclasses ``FedOpt`` and overrides only ``second_moment``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from qflare.fl.arrays import NDArrays, check_like
from qflare.fl.job import StrategyParams
from qflare.fl.spec import WEIGHTS
from qflare.fl.state import StrategyState
from qflare.fl.strategies import _arrays
from qflare.fl.strategies._arrays import F64
from qflare.fl.strategy import RoundInput, Strategy

FIRST = "m"
SECOND = "v"


class FedOptParams(StrategyParams):
    """The parameters every FedOpt variant has; Adam and Yogi add ``beta2``."""

    server_lr: float = Field(1e-2, gt=0, description="Server learning rate η.")
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay β1.")
    tau: float = Field(1e-3, gt=0, description="Adaptivity τ: added to sqrt(v); v starts at τ².")


class FedOptBeta2Params(FedOptParams):
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay β2.")


def first_moment(m: F64, delta: F64, beta1: float) -> F64:
    """``β1 m + (1 - β1) Δ``."""
    return beta1 * m + (1.0 - beta1) * delta


def adaptive_step(weights: F64, m: F64, v: F64, lr: float, tau: float) -> F64:
    """``w + η m / (sqrt(v) + τ)``."""
    return weights + lr * m / (np.sqrt(v) + tau)


class FedOpt(Strategy):
    """Adaptive server optimiser on FedAvg's pseudo-gradient (streaming, example-weighted)."""

    @property
    def params(self) -> FedOptParams:
        params = self.job.strategy
        assert isinstance(params, FedOptParams)  # checked when the strategy was built
        return params

    @abstractmethod
    def second_moment(self, v: F64, delta: F64) -> F64:
        """The variant's update of ``v`` from the pseudo-gradient ``Δ`` (element-wise)."""

    def aggregate(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        self._check_owner(state)
        sums = self._sums(round)
        acc = sums.sums[WEIGHTS]
        check_like(global_weights, acc.shapes, acc.names)
        p = self.params
        ms = _arrays.load(state.arrays, FIRST, acc.names, acc.shapes)
        vs = _arrays.load(state.arrays, SECOND, acc.names, acc.shapes, fill=p.tau**2)
        new_w, new_m, new_v = [], [], []
        for w, mean, m, v in zip(global_weights, acc.mean(), ms, vs, strict=True):
            w64 = np.asarray(w, np.float64)
            delta = np.asarray(mean, np.float64) - w64
            m = first_moment(m, delta, p.beta1)
            v = self.second_moment(v, delta)
            new_w.append(adaptive_step(w64, m, v, p.server_lr, p.tau))
            new_m.append(m)
            new_v.append(v)
        arrays = {
            **state.arrays,
            **_arrays.store(FIRST, acc.names, new_m),
            **_arrays.store(SECOND, acc.names, new_v),
        }
        return _arrays.as_float32(new_w), replace(state, round=sums.round, arrays=arrays)
