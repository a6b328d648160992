"""An update's and a global model's tensor groups on the device: split, check, order, filter.

A global model record holds the weights (plain names, layout order), then each
other group the strategy sends (``control/<name>``: ``qflare.protocol.tensors``).
A device's update holds its shared weights in layout order, then each other group
sorted by name, each in layout order. FedPer's personal tensors (``config.personal``)
never leave the device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from qflare.errors import SchemaError
from qflare.fl import TrainConfig
from qflare.fl.spec import CONTROL, WEIGHTS
from qflare.ml.solvers import personal_mask
from qflare.protocol import Tensor
from qflare.protocol.tensors import qualified, split_groups


def server_group_names(config: TrainConfig) -> frozenset[str]:
    """The groups other than the weights that the round's strategy sends with the model."""
    return frozenset({CONTROL}) if config.scaffold else frozenset()


def split_model(
    names: tuple[str, ...], arrays: list[npt.NDArray[Any]], config: TrainConfig
) -> tuple[list[npt.NDArray[Any]], tuple[str, ...], dict[str, list[npt.NDArray[Any]]]]:
    """The model record's weights, their names, and each server group in the weights' order.

    The record holds the weights, then ``<group>/<name>`` tensors (``split_groups``). A group
    the round expects must name exactly the weights' tensors (in any order); one the strategy
    did not send is absent from the result, and the solver reads it as zeros. ``ConfigError``
    if ``config.personal`` is not a regular expression.
    """
    expected = server_group_names(config)
    split = split_groups([Tensor.of(n, a) for n, a in zip(names, arrays, strict=True)], expected)
    weight_tensors = split.get(WEIGHTS, [])
    weight_names = tuple(t.name for t in weight_tensors)
    weights = [t.array for t in weight_tensors]
    groups: dict[str, list[npt.NDArray[Any]]] = {}
    for group in sorted(set(split) - {WEIGHTS}):
        by_name = {t.name: t.array for t in split[group]}
        if set(by_name) != set(weight_names) or len(by_name) != len(split[group]):
            raise SchemaError(
                f"the model's {group} group names {sorted(by_name)[:3]}..., not the weights' tensors",
                field=f"tensors.{group}",
            )
        groups[group] = [by_name[n] for n in weight_names]
    personal_mask(weight_names, config.personal)  # a bad regular expression fails here, before training
    return weights, weight_names, groups


def default_local_steps(config: TrainConfig, num_examples: int) -> int:
    """SGD steps of ``config.epochs`` over ``num_examples`` in batches of ``config.batch_size`` (0: all)."""
    batch = config.batch_size or max(num_examples, 1)
    return max(1, config.epochs * math.ceil(max(num_examples, 1) / batch))


def update_tensors(
    names: tuple[str, ...],
    weights: list[npt.NDArray[Any]],
    groups: dict[str, list[npt.NDArray[Any]]],
    personal: str,
) -> tuple[Tensor, ...]:
    """An update's tensors in wire order: the shared weights (layout order), then each other group
    (sorted by name, each in layout order) under ``<group>/<name>``. Personal weights stay here."""
    mask = personal_mask(names, personal)
    out = [
        Tensor.of(n, np.ascontiguousarray(w, dtype=np.float32))
        for n, w, m in zip(names, weights, mask, strict=True)
        if not m
    ]
    for group in sorted(groups):
        out += [
            Tensor.of(qualified(group, n), np.ascontiguousarray(a, dtype=np.float32))
            for n, a in zip(names, groups[group], strict=True)
        ]
    return tuple(out)
