"""A test-only buffered strategy: the coordinate-wise median of the round's weights.

It exists to drive the aggregator's buffered mode end to end without depending on
the robust aggregators a later change adds. It also requires the metric
``local_steps`` (so the service's metric checks run) and sends devices a server
group, ``delta`` (the last round's change of the global model; zeros before the
first), so version 0 and every later version carry one. The aggregator process
imports this module through ``plugins/sitecustomize.py`` on its ``PYTHONPATH``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from qflare.fl import MetricSpec, StrategyParams, StrategyState, UpdateSpec, register_strategy
from qflare.fl.arrays import NDArrays, Shape
from qflare.fl.strategy import Mode, RoundInput, Strategy
from qflare.ml import layout

NAME = "test_median"
DELTA = "delta"


class MedianParams(StrategyParams):
    name: Literal["test_median"] = "test_median"


@register_strategy
class Median(Strategy):
    name = NAME
    Params: ClassVar[type[StrategyParams]] = MedianParams
    mode: ClassVar[Mode] = "buffered"

    def update_spec(self, names: Sequence[str], shapes: Sequence[Shape]) -> UpdateSpec:
        base = super().update_spec(names, shapes)
        return UpdateSpec(base.groups, {"local_steps": MetricSpec(1, 10_000, integer=True)})

    def server_groups(self, state: StrategyState) -> dict[str, NDArrays]:
        found = [state.arrays[k] for k in sorted(state.arrays) if k.startswith(f"{DELTA}.")]
        if found:
            return {DELTA: found}
        shapes = [s for _, s in layout(str(self.job.model).removeprefix("builtin:"))]
        return {DELTA: [np.zeros(s, np.float32) for s in shapes]}

    def aggregate(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        self._check_owner(state)
        updates = self._updates(round)
        new = [
            np.median(np.stack([np.asarray(u.weights[i]) for u in updates]), axis=0).astype(np.float32)
            for i in range(len(global_weights))
        ]
        arrays = {
            f"{DELTA}.{i:03d}": (w - g).astype(np.float32)
            for i, (w, g) in enumerate(zip(new, global_weights, strict=True))
        }
        steps = sum(int(u.metrics["local_steps"]) for u in updates)
        return new, replace(state, round=state.round + 1, arrays=arrays, scalars={"local_steps": steps})
