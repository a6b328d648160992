"""What makes a verified ``ModelUpdate`` acceptable for a round, each failure with a typed reason.

The envelope layer (``qflare.protocol.Decoder``) has already checked the
signature against the device's registered key, the digest, the limits and
that every tensor is finite (the one pass over the values that protocol §8
asks of the decoder). These checks are about meaning: is this device allowed
to answer this round, from this model version, once, with a model of the
right names, dtypes and shapes? They read no tensor data: the value range is
the exact sum's own guard (``FixedPointAccumulator.add``), so each value is
looked at once by the decoder and once where it is summed, not again here.
They run cheapest first, and a rejected update never touches the running sum.
"""

from __future__ import annotations

from collections.abc import Mapping

from qflare.errors import InvalidUpdateError, Rejected
from qflare.fl import FixedPoint
from qflare.protocol.training import ModelUpdate, RoundFailure
from qflare.reasons import Reason
from services.aggregator.models import Layout
from services.aggregator.rounds import OpenRound


def find_round(
    update: ModelUpdate | RoundFailure,
    *,
    sender: str,
    header_round: int | None,
    rounds: Mapping[tuple[str, int], OpenRound],
) -> OpenRound:
    """The open round ``update`` answers, or ``Rejected`` (a spoofed device id, a closed or unknown round)."""
    if update.device_id != sender:
        raise Rejected(Reason.SENDER_MISMATCH, f"signed by {sender!r}", field="body.device_id")
    if header_round != update.round:
        raise Rejected(Reason.WRONG_ROUND, f"envelope round {header_round} != body round", field="round")
    rnd = rounds.get((update.job_id, update.round))
    if rnd is None:
        raise Rejected(
            Reason.WRONG_ROUND, f"round {update.round} of {update.job_id!r} is not open", field="body.round"
        )
    return rnd


def check_update(
    update: ModelUpdate, *, message_id: bytes, rnd: OpenRound, layout: Layout, fmt: FixedPoint
) -> None:
    """Raise ``Rejected`` unless ``update`` may be added to ``rnd``, whose model has ``layout``."""
    check_answer(update, message_id=message_id, rnd=rnd)
    if not 1 <= update.num_examples <= fmt.capacity:
        raise Rejected(Reason.NUM_EXAMPLES, f"must be in [1, {fmt.capacity}]", field="body.num_examples")
    check_tensors(update, layout)


def check_evaluation_reply(update: ModelUpdate, *, message_id: bytes, rnd: OpenRound) -> None:
    """Raise ``Rejected`` unless ``update`` is a reply to the evaluation-only round ``rnd``:
    no weights, no training examples (its evaluation, if any, is in its metrics)."""
    check_answer(update, message_id=message_id, rnd=rnd)
    if update.tensors:
        raise Rejected(
            Reason.SHAPE, f"round {rnd.round} only evaluates: a reply has no tensors", field="body.tensors"
        )
    if update.num_examples != 0:
        raise Rejected(
            Reason.NUM_EXAMPLES, "an evaluation reply trains on no examples", field="body.num_examples"
        )


def check_answer(update: ModelUpdate | RoundFailure, *, message_id: bytes, rnd: OpenRound) -> None:
    """The checks of any answer to ``rnd`` (an update or a failed reply): selected, from the
    round's version, once."""
    if update.device_id not in rnd.devices:
        raise Rejected(Reason.UNSELECTED, f"{update.device_id!r} was not selected for round {rnd.round}")
    if update.base_version != rnd.model_version:
        raise Rejected(
            Reason.WRONG_VERSION,
            f"trained from version {update.base_version}, the round is on {rnd.model_version}",
            field="body.base_version",
        )
    earlier = rnd.answer(update.device_id)
    if earlier is not None:
        if earlier.message_id == message_id:
            raise Rejected(Reason.REPLAY, f"reply {message_id.hex()} is already counted", field="id")
        raise Rejected(Reason.DUPLICATE, f"{update.device_id!r} already answered round {rnd.round}")


def check_tensors(update: ModelUpdate, layout: Layout) -> None:
    """Names, order, dtypes and shapes as the job's layout has them (values are not read here)."""
    names = tuple(t.name for t in update.tensors)
    if names != layout.names:
        raise Rejected(
            Reason.SHAPE, f"tensors {list(names)} != the model's {list(layout.names)}", field="body.tensors"
        )
    for i, (tensor, shape) in enumerate(zip(update.tensors, layout.shapes, strict=True)):
        where = f"body.tensors[{i}]"
        if tensor.dtype != layout.dtype:
            raise Rejected(Reason.SHAPE, f"dtype {tensor.dtype} != {layout.dtype}", field=f"{where}.dtype")
        if tuple(tensor.array.shape) != shape:
            raise Rejected(
                Reason.SHAPE, f"shape {tuple(tensor.array.shape)} != {shape}", field=f"{where}.shape"
            )


def out_of_range(exc: InvalidUpdateError, layout: Layout) -> Rejected:
    """The sum's own refusal (a value beyond the fixed-point range, or a full round) as a rejection.

    The accumulator names a tensor or ``num_examples``; the rejection names the
    wire field, as every other rejection of an update does.
    """
    field = exc.field
    if field in layout.names:
        field = f"body.tensors[{layout.names.index(field)}].data"
    elif field == "num_examples":
        field = "body.num_examples"
    return Rejected(Reason.OUT_OF_RANGE, str(exc), field=field)
