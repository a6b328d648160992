"""FedNova (Wang et al., 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization"): normalised averaging by each device's local step count.

Devices that take more local steps move further; FedAvg's plain average then drifts
toward their objectives. FedNova divides each device's change by its number of steps
``τ_k`` before averaging, and rescales by the effective step count. With ``w`` the
global model, ``w_k`` device k's weights, ``n_k`` its examples and ``τ_k`` its
``local_steps`` metric:

    p_k   = n_k / Σ n_j
    d_k   = (w - w_k) / τ_k              device k's normalised change (plain SGD: ‖a_k‖₁ = τ_k)
    τ_eff = Σ p_k τ_k
    w ←  w - τ_eff Σ p_k d_k

With equal ``τ_k`` this is FedAvg. It needs each update with its own ``τ_k``, so it is
a buffered strategy: ``aggregate`` receives the round's updates in device-id order and
sums them in that order in float64, so the result is the same on every replay. The
update spec requires the integer metric ``local_steps`` ≥ 1. No server state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from qflare.fl.arrays import NDArrays, Shape, check_like, shapes_of
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.spec import MetricSpec, UpdateSpec
from qflare.fl.state import StrategyState
from qflare.fl.strategies._arrays import F64, as_float32
from qflare.fl.strategy import Mode, RoundInput, Strategy

LOCAL_STEPS = "local_steps"
#: More local steps than any real round takes; keeps τ_eff and the weights finite.
MAX_LOCAL_STEPS = 1e9


class FedNovaParams(StrategyParams):
    """FedNova (vanilla SGD on devices) has no parameters of its own."""

    name: Literal["fednova"] = "fednova"


def nova_average(weights: Sequence[F64], updates: Sequence[tuple[Sequence[F64], int, float]]) -> list[F64]:
    """``w - τ_eff Σ p_k (w - w_k)/τ_k`` over ``[(w_k, n_k, τ_k), ...]``, summed in list order."""
    total = float(sum(n for _, n, _ in updates))
    tau_eff = sum(n / total * tau for _, n, tau in updates)
    out = []
    for i, w in enumerate(weights):
        direction = np.zeros_like(w)
        for w_k, n, tau in updates:
            direction += (n / total) * (w - w_k[i]) / tau
        out.append(w - tau_eff * direction)
    return out


@register_strategy
class FedNova(Strategy):
    """Averages each device's change divided by its local steps (Wang et al., 2020)."""

    name = "fednova"
    Params: ClassVar[type[StrategyParams]] = FedNovaParams
    mode: ClassVar[Mode] = "buffered"

    def update_spec(self, names: Sequence[str], shapes: Sequence[Shape]) -> UpdateSpec:
        base = super().update_spec(names, shapes)
        return UpdateSpec(base.groups, {LOCAL_STEPS: MetricSpec(1, MAX_LOCAL_STEPS, integer=True)})

    def aggregate(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        self._check_owner(state)
        updates = self._updates(round)
        shapes = shapes_of(global_weights)
        names = [f"t{i}" for i in range(len(shapes))]
        check_like(global_weights, shapes, names)
        # The aggregator checked every update; checking again keeps input from another path honest.
        spec = self.update_spec(names, shapes)
        rows: list[tuple[Sequence[F64], int, float]] = []
        for update in updates:
            spec.check(update.groups, update.metrics)
            rows.append(
                (
                    [np.asarray(a, np.float64) for a in update.weights],
                    update.num_examples,
                    float(update.metrics[LOCAL_STEPS]),
                )
            )
        new = nova_average([np.asarray(w, np.float64) for w in global_weights], rows)
        # A buffered round carries no round number; the state counts the rounds it has closed.
        return as_float32(new), replace(state, round=state.round + 1)
