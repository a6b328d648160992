"""Named server-state arrays (moments, control variates) in and out of ``StrategyState.arrays``.

A strategy keeps one float64 array per model tensor under ``<prefix>.<tensor name>``
(``m.fc1.weight``), written in the model's tensor order so the state's bytes are a
function of the values alone. Missing arrays (before the first round closes) start
at a constant; an array of the wrong shape means the state belongs to another model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import AggregationError
from qflare.fl.arrays import Shape

F64 = NDArray[np.float64]


def load(
    arrays: Mapping[str, NDArray[Any]],
    prefix: str,
    names: Sequence[str],
    shapes: Sequence[Shape],
    fill: float = 0.0,
) -> list[F64]:
    """The arrays ``<prefix>.<name>`` as float64 copies; absent ones are ``fill`` of ``shapes``."""
    out: list[F64] = []
    for name, shape in zip(names, shapes, strict=True):
        key = f"{prefix}.{name}"
        stored = arrays.get(key)
        if stored is None:
            out.append(np.full(shape, fill, dtype=np.float64))
            continue
        if tuple(stored.shape) != tuple(shape):
            raise AggregationError(
                f"shape {tuple(stored.shape)} is not the model's {tuple(shape)}", field=f"arrays.{key}"
            )
        out.append(np.array(stored, dtype=np.float64))
    return out


def store(prefix: str, names: Sequence[str], values: Sequence[F64]) -> dict[str, NDArray[Any]]:
    """``{<prefix>.<name>: value}`` in tensor order, ready for ``StrategyState.arrays``."""
    return {f"{prefix}.{n}": np.ascontiguousarray(v, np.float64) for n, v in zip(names, values, strict=True)}


def as_float32(values: Sequence[F64]) -> list[NDArray[np.float32]]:
    return [np.asarray(v, dtype=np.float64).astype(np.float32) for v in values]
