"""The device's own check of a handler's weights against the global model it was given.

The aggregator refuses an update whose layout differs from the job's model, but
only after the device has signed and sent it: the error then lives in an audit
record far from the code that caused it. Checking here, before anything is sent,
turns a wrong return value into a failed reply that names the tensor, in the
device's own log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from qflare.errors import QflareError, Reason

Array = npt.NDArray[Any]


class LayoutError(QflareError):
    """A handler returned weights whose count, names, order, shapes or dtypes differ from the model's.

    ``field`` names the tensor (or ``weights`` when the count is wrong and no single tensor is to blame).
    """

    reason = Reason.SHAPE


def tensor_labels(names: Sequence[str], count: int) -> list[str]:
    """The tensors' names, or their positions when the task carries none (a task built by hand)."""
    return list(names) if len(names) == count else [f"#{i}" for i in range(count)]


def check_layout(
    names: Sequence[str], expected: Sequence[Array], returned: Sequence[Array] | Mapping[str, Array]
) -> list[Array]:
    """``returned`` as a list in the model's order, or ``LayoutError`` naming the first bad tensor.

    ``returned`` is a list in the model's order, or a mapping of name to array whose keys must be
    the model's names in the model's order (what a ``state_dict`` converted to numpy gives).
    """
    labels = tensor_labels(names, len(expected))
    if isinstance(returned, Mapping):
        arrays = _from_mapping(labels, returned)
    elif isinstance(returned, list | tuple):
        arrays = list(returned)
    else:
        raise LayoutError(
            f"expected a list of numpy arrays or a dict of name to array, got {type(returned).__name__}",
            field="weights",
        )
    if len(arrays) != len(expected):
        where = labels[len(arrays)] if len(arrays) < len(expected) else f"#{len(arrays) - 1}"
        raise LayoutError(
            f"{len(arrays)} tensors returned, the global model has {len(expected)} "
            f"(first difference: {where})",
            field="weights",
        )
    for label, want, got in zip(labels, expected, arrays, strict=True):
        if not isinstance(got, np.ndarray):
            raise LayoutError(
                f"is a {type(got).__module__}.{type(got).__name__}, not a numpy array "
                "(a torch tensor converts with .detach().cpu().numpy())",
                field=label,
            )
        if got.shape != want.shape:
            raise LayoutError(f"shape {got.shape} != the global model's {want.shape}", field=label)
        if got.dtype != want.dtype:
            raise LayoutError(
                f"dtype {got.dtype} != the global model's {want.dtype} (cast with .astype(np.{want.dtype}))",
                field=label,
            )
    return arrays


def _from_mapping(labels: list[str], returned: Mapping[str, Array]) -> list[Array]:
    keys = list(returned)
    missing = [n for n in labels if n not in returned]
    if missing:
        raise LayoutError("missing from the returned tensors", field=missing[0])
    extra = [k for k in keys if k not in set(labels)]
    if extra:
        raise LayoutError("is not a tensor of the global model", field=str(extra[0]))
    for position, (want, got) in enumerate(zip(labels, keys, strict=True)):
        if want != got:
            raise LayoutError(
                f"returned at position {position}, where the global model has {want!r}", field=got
            )
    return [returned[n] for n in labels]
