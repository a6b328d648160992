"""SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", Algorithm 1 with option II): control variates correct the devices' drift.

The server keeps a control variate ``c`` per weight; each device keeps its own ``c_i``
in its durable local state. A round, with ``x`` the global model:

- the server sends ``x`` and ``c`` (``server_groups``: the ``control`` group);
- device i runs K local steps of ``y ← y - η (g(y) - c_i + c)`` from ``y = x``, then
  ``c_i⁺ = c_i - c + (x - y)/(K η)`` (option II), keeps ``c_i⁺`` and sends its
  weights ``y_i`` and ``control`` = ``Δc_i = c_i⁺ - c_i``;
- the server, over the round's devices S of a fleet of N:

      x ← x + η_g mean_S(y_i - x)  =  x + η_g (mean_S(y_i) - x)
      c ← c + (|S| / N) mean_S(Δc_i)

Both means are unweighted (the paper's), so both groups stream as ``uniform`` sums.
``num_devices`` is N; 0 takes ``|S|/N`` as the job's client fraction C. ``server_lr``
is η_g (the paper's default 1). ``c`` lives in ``StrategyState.arrays`` as
``control.<tensor>`` (float64) and changes only when a round closes. Before the first
round closes ``c = 0``; ``server_groups`` then sends no control group, and a device
treats a missing one as zeros (the state does not know the model's shapes yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from qflare.fl.arrays import NDArrays, Shape, check_like
from qflare.fl.job import StrategyParams, TrainConfig
from qflare.fl.registry import register_strategy
from qflare.fl.spec import CONTROL, WEIGHTS, GroupSpec, UpdateSpec
from qflare.fl.state import StrategyState
from qflare.fl.strategies import _arrays
from qflare.fl.strategies._arrays import F64
from qflare.fl.strategy import RoundInput, Strategy


class ScaffoldParams(StrategyParams):
    name: Literal["scaffold"] = "scaffold"
    server_lr: float = Field(1.0, gt=0, description="Global step size η_g.")
    num_devices: int = Field(
        0, ge=0, description="Fleet size N for c's step |S|/N; 0: use the job's client fraction C."
    )


def scaffold_step(
    x: F64, mean_y: F64, c: F64, mean_dc: F64, server_lr: float, share: float
) -> tuple[F64, F64]:
    """``x' = x + η_g (mean(y_i) - x)``, ``c' = c + share · mean(Δc_i)``; returns ``(x', c')``."""
    return x + server_lr * (mean_y - x), c + share * mean_dc


@register_strategy
class Scaffold(Strategy):
    """Control variates correct the devices' drift (Karimireddy et al., 2020)."""

    name = "scaffold"
    Params: ClassVar[type[StrategyParams]] = ScaffoldParams

    @property
    def params(self) -> ScaffoldParams:
        params = self.job.strategy
        assert isinstance(params, ScaffoldParams)  # checked when the strategy was built
        return params

    def train_config(self, round: int) -> TrainConfig:
        return super().train_config(round).model_copy(update={"scaffold": True})

    def update_spec(self, names: Sequence[str], shapes: Sequence[Shape]) -> UpdateSpec:
        weights = super().update_spec(names, shapes).groups[WEIGHTS]
        uniform = GroupSpec(weights.names, weights.shapes, weights.max_abs, "uniform")
        return UpdateSpec({WEIGHTS: uniform, CONTROL: uniform})

    def server_groups(self, state: StrategyState) -> dict[str, NDArrays]:
        """``{"control": c}`` in the model's tensor order; nothing before the first round closes."""
        self._check_owner(state)
        prefix = f"{CONTROL}."
        control = [a.astype(np.float32) for k, a in state.arrays.items() if k.startswith(prefix)]
        return {CONTROL: control} if control else {}

    def share(self, participants: int) -> float:
        """``|S| / N``: the weight of the round's mean control change in the global one."""
        n = self.params.num_devices
        # More participants than the fleet means N was set too low; never step past the full change.
        return min(1.0, participants / n) if n else self.job.fraction

    def aggregate(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        self._check_owner(state)
        sums = self._sums(round)
        acc = sums.sums[WEIGHTS]
        check_like(global_weights, acc.shapes, acc.names)
        controls = _arrays.load(state.arrays, CONTROL, acc.names, acc.shapes)
        share = self.share(sums.count)
        new_x, new_c = [], []
        for x, y, c, dc in zip(global_weights, acc.mean(), controls, sums.sums[CONTROL].mean(), strict=True):
            x2, c2 = scaffold_step(
                np.asarray(x, np.float64),
                np.asarray(y, np.float64),
                c,
                np.asarray(dc, np.float64),
                self.params.server_lr,
                share,
            )
            new_x.append(x2)
            new_c.append(c2)
        arrays = {**state.arrays, **_arrays.store(CONTROL, acc.names, new_c)}
        return _arrays.as_float32(new_x), replace(state, round=sums.round, arrays=arrays)
