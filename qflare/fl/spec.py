"""What a strategy asks of devices: the update spec the aggregator enforces.

An update is a device id, named tensor groups, an example count and the device's
metrics (``qflare.fl.strategy.Update``). The strategy declares, per round, which
groups it expects (each with its tensors' names and shapes and the largest value it
accepts) and which metrics must come with them (``local_steps`` for FedNova). The
aggregator checks every update against this spec before it is summed or buffered,
so nothing about "the model's tensors, float32, |x| <= 256" is hard-coded there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from qflare.errors import InvalidUpdateError
from qflare.fl.arrays import Shape

#: The group holding the model's trained weights (``ModelUpdate.tensors`` on the wire).
WEIGHTS = "weights"
#: SCAFFOLD's control-variate group, in both directions.
CONTROL = "control"

#: How a streamed group's sum weighs each update: by its example count, or one each.
Weighting = Literal["examples", "uniform"]


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """One tensor group: its tensors in order, and the largest magnitude accepted."""

    names: tuple[str, ...]
    shapes: tuple[Shape, ...]
    max_abs: float
    weighting: Weighting = "examples"

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes) or len(set(self.names)) != len(self.names):
            raise InvalidUpdateError("tensor names must be unique and match the shapes", field="names")

    @property
    def num_values(self) -> int:
        return sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    def check(self, group: str, arrays: Sequence[NDArray[Any]]) -> None:
        """Raise ``InvalidUpdateError`` naming ``group.tensor`` for the first value that does not fit."""
        if len(arrays) != len(self.shapes):
            raise InvalidUpdateError(
                f"expected {len(self.shapes)} tensors, got {len(arrays)}", field=f"groups.{group}"
            )
        for array, shape, name in zip(arrays, self.shapes, self.names, strict=True):
            where = f"groups.{group}.{name}"
            if array.dtype != np.float32:
                raise InvalidUpdateError(f"dtype {array.dtype} is not float32", field=where)
            if tuple(array.shape) != tuple(shape):
                raise InvalidUpdateError(
                    f"shape {tuple(array.shape)} != expected {tuple(shape)}", field=where
                )
            if array.size:
                peak = float(np.max(np.abs(array)))
                if not math.isfinite(peak):
                    raise InvalidUpdateError("holds a NaN or an infinity", field=where)
                if peak > self.max_abs:
                    raise InvalidUpdateError(f"|x| = {peak:.6g} exceeds {self.max_abs:.6g}", field=where)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric every update must carry, within ``[low, high]`` (an integer if ``integer``)."""

    low: float
    high: float
    integer: bool = False

    def check(self, name: str, value: float | None) -> None:
        where = f"metrics.{name}"
        if value is None:
            raise InvalidUpdateError("is required by the job's strategy", field=where)
        if not (math.isfinite(value) and self.low <= value <= self.high):
            raise InvalidUpdateError(f"{value!r} is outside [{self.low}, {self.high}]", field=where)
        if self.integer and value != int(value):
            raise InvalidUpdateError(f"{value!r} is not an integer", field=where)


@dataclass(frozen=True, slots=True)
class UpdateSpec:
    """Every group an update must hold (no more, no fewer) and the metrics it must report."""

    groups: Mapping[str, GroupSpec]
    metrics: Mapping[str, MetricSpec] = field(default_factory=dict)

    def check(self, groups: Mapping[str, Sequence[NDArray[Any]]], metrics: Mapping[str, float]) -> None:
        """Raise ``InvalidUpdateError`` naming the first group, tensor or metric that is wrong."""
        for name in sorted(set(groups) - set(self.groups)):
            raise InvalidUpdateError("is not a group the job's strategy expects", field=f"groups.{name}")
        for name, spec in self.groups.items():
            if name not in groups:
                raise InvalidUpdateError("is required by the job's strategy", field=f"groups.{name}")
            spec.check(name, groups[name])
        for name, metric in self.metrics.items():
            metric.check(name, metrics.get(name))

    def data_bytes(self) -> int:
        """The float32 payload of a conforming update: what a chunked stream must at least carry."""
        return 4 * sum(g.num_values for g in self.groups.values())
