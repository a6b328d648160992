"""Shared aliases and helpers for models held as ordered lists of numpy arrays.

A model travels as ``list[ndarray]`` in ``state_dict`` order (Flower's ``NDArrays``);
names, when needed, travel alongside. The flat helpers exist for maths that is
simpler on one vector (norms, clipping, distances) and for compact storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import InvalidUpdateError

#: One model's parameters, in a fixed order.
NDArrays = list[NDArray[Any]]
Shape = tuple[int, ...]


def shapes_of(arrays: Sequence[NDArray[Any]]) -> list[Shape]:
    return [tuple(int(d) for d in a.shape) for a in arrays]


def flatten(arrays: Sequence[NDArray[Any]], dtype: type[np.floating[Any]] = np.float32) -> NDArray[Any]:
    """Concatenate all arrays, C order, into one 1-D array of ``dtype``."""
    if not arrays:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(a, dtype=dtype).reshape(-1) for a in arrays])


def unflatten(flat: NDArray[Any], shapes: Sequence[Shape]) -> NDArrays:
    """Split ``flat`` back into arrays of ``shapes`` (copies, so the results are independent)."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    if flat.ndim != 1 or flat.size != sum(sizes):
        raise InvalidUpdateError(
            f"flat vector of {flat.size} values does not fill shapes totalling {sum(sizes)}"
        )
    out: NDArrays = []
    offset = 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(flat[offset : offset + size].reshape(shape).copy())
        offset += size
    return out


def check_like(arrays: Sequence[NDArray[Any]], shapes: Sequence[Shape], names: Sequence[str]) -> None:
    """Raise ``InvalidUpdateError`` naming the first tensor whose count or shape differs."""
    if len(arrays) != len(shapes):
        raise InvalidUpdateError(f"expected {len(shapes)} tensors, got {len(arrays)}", field="tensors")
    for array, shape, name in zip(arrays, shapes, names, strict=True):
        if tuple(array.shape) != tuple(shape):
            raise InvalidUpdateError(f"shape {tuple(array.shape)} != expected {tuple(shape)}", field=name)
        if array.dtype.kind != "f":
            raise InvalidUpdateError(f"dtype {array.dtype} is not floating point", field=name)
