"""What makes a verified ``ModelUpdate`` acceptable for a round, each failure with a typed reason.

The envelope layer (``qflare.protocol.Decoder``) has already checked the
signature against the device's registered key, the digest and the limits.
These checks are about meaning: is this device allowed to answer this round,
from this model version, once, with a model of the right shape and range?
They run cheapest first, and a rejected update never touches the running sum.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qflare.errors import QflareError
from qflare.fl import FixedPoint
from qflare.protocol.training import ModelUpdate
from services.aggregator.models import Layout
from services.aggregator.rounds import OpenRound

#: Every reason ``check_update`` can give (beyond the decoder's own).
REASONS = (
    "sender_mismatch",
    "wrong_round",
    "unselected",
    "wrong_version",
    "replay",
    "duplicate",
    "num_examples",
    "shape",
    "non_finite",
    "out_of_range",
)


class Rejected(QflareError):
    """A verified message that the aggregator refuses; ``reason`` is the audit and metric label."""

    def __init__(self, reason: str, message: str, *, field: str | None = None) -> None:
        self.reason = reason
        super().__init__(message, field=field)


def find_round(
    update: ModelUpdate,
    *,
    sender: str,
    header_round: int | None,
    rounds: Mapping[tuple[str, int], OpenRound],
) -> OpenRound:
    """The open round ``update`` answers, or ``Rejected`` (a spoofed device id, a closed or unknown round)."""
    if update.device_id != sender:
        raise Rejected("sender_mismatch", f"signed by {sender!r}", field="body.device_id")
    if header_round != update.round:
        raise Rejected("wrong_round", f"envelope round {header_round} != body round", field="round")
    rnd = rounds.get((update.job_id, update.round))
    if rnd is None:
        raise Rejected(
            "wrong_round", f"round {update.round} of {update.job_id!r} is not open", field="body.round"
        )
    return rnd


def check_update(
    update: ModelUpdate, *, message_id: bytes, rnd: OpenRound, layout: Layout, fmt: FixedPoint
) -> None:
    """Raise ``Rejected`` unless ``update`` may be added to ``rnd``, whose model has ``layout``."""
    if update.device_id not in rnd.devices:
        raise Rejected("unselected", f"{update.device_id!r} was not selected for round {rnd.round}")
    if update.base_version != rnd.model_version:
        raise Rejected(
            "wrong_version",
            f"trained from version {update.base_version}, the round is on {rnd.model_version}",
            field="body.base_version",
        )
    earlier = rnd.included.get(update.device_id)
    if earlier is not None:
        if earlier.message_id == message_id:
            raise Rejected("replay", f"update {message_id.hex()} is already included", field="id")
        raise Rejected("duplicate", f"{update.device_id!r} already has an update in round {rnd.round}")
    if not 1 <= update.num_examples <= fmt.capacity:
        raise Rejected("num_examples", f"must be in [1, {fmt.capacity}]", field="body.num_examples")
    check_tensors(update, layout, fmt)


def check_tensors(update: ModelUpdate, layout: Layout, fmt: FixedPoint) -> None:
    names = tuple(t.name for t in update.tensors)
    if names != layout.names:
        raise Rejected(
            "shape", f"tensors {list(names)} != the model's {list(layout.names)}", field="body.tensors"
        )
    for i, (tensor, shape) in enumerate(zip(update.tensors, layout.shapes, strict=True)):
        where = f"body.tensors[{i}]"
        if tensor.dtype != layout.dtype:
            raise Rejected("shape", f"dtype {tensor.dtype} != {layout.dtype}", field=f"{where}.dtype")
        if tuple(tensor.array.shape) != shape:
            raise Rejected("shape", f"shape {tuple(tensor.array.shape)} != {shape}", field=f"{where}.shape")
        if not tensor.array.size:
            continue
        # One pass: max |x| is NaN when any value is NaN, inf when any is infinite.
        peak = float(np.max(np.abs(tensor.array)))
        if not np.isfinite(peak):
            raise Rejected("non_finite", "contains NaN or infinity", field=f"{where}.data")
        if peak > fmt.max_abs:
            raise Rejected("out_of_range", f"|value| {peak:g} exceeds {fmt.max_abs:g}", field=f"{where}.data")
