"""A model owner's central evaluation entry points, as a package installed on the aggregator's host would
hold them (the tests register them with ``QFLARE_AGGREGATOR_EVALUATORS``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Result:
    num_examples: int
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)


def mean_weight(names: tuple[str, ...], weights: list[NDArray[Any]]) -> Result:
    """A toy evaluation: the loss is the first tensor's mean; accuracy says how many tensors came."""
    assert len(names) == len(weights)
    return Result(10, float(np.mean(weights[0])), {"accuracy": len(weights) / 10, "tensors": len(weights)})


def broken(names: tuple[str, ...], weights: list[NDArray[Any]]) -> Result:
    raise RuntimeError("the owner's test data is missing")


def missing_file(names: tuple[str, ...], weights: list[NDArray[Any]]) -> Result:
    with open("/nonexistent/owner-test-data.npz", "rb"):
        return Result(1, 1.0)


def no_examples(names: tuple[str, ...], weights: list[NDArray[Any]]) -> Result:
    return Result(0, 1.0)


NOT_A_FUNCTION = 3
