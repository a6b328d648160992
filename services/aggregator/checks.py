"""What makes a verified ``ModelUpdate`` acceptable for a round, each failure with a typed reason.

The envelope layer (``qflare.protocol.Decoder``) has already checked the
signature against the device's registered key, the digest, the limits and
that every tensor is finite (the one pass over the values that protocol §8
asks of the decoder). These checks are about meaning: is this device allowed
to answer this round, from this model version, once, with the tensor groups
and metrics the job's strategy declares (``Strategy.update_spec``)? The group
and metric checks read metadata only. The value range is read once more, and
only where it must be: a streaming strategy's exact sum guards its own range
(``FixedPointAccumulator.add``), so a one-group update is not read here; a
buffered strategy keeps no sum, and an update of several streamed groups must
be known good in all of them before any is added, so those are read by
``check_values``. They run cheapest first; a rejected update never touches the
round's sums or buffer.
"""

from __future__ import annotations

from collections.abc import Mapping

from qflare.errors import InvalidUpdateError, Rejected
from qflare.fl import WEIGHTS, FixedPoint, RoundSums, Update, UpdateSpec
from qflare.protocol import Message, Tensor
from qflare.protocol.messages import ModelChunk
from qflare.protocol.tensors import qualified, split_groups
from qflare.protocol.training import ModelUpdate, RoundFailure
from qflare.reasons import Reason
from services.aggregator.jobs import Job
from services.aggregator.models import MODEL_DTYPE
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
    update: ModelUpdate, *, message_id: bytes, rnd: OpenRound, spec: UpdateSpec, fmt: FixedPoint
) -> Update:
    """The ``Update`` to fold into ``rnd``, or ``Rejected``: the answer, its example count, its
    tensor groups (metadata) and its metrics, as the strategy's ``spec`` asks."""
    check_answer(update, message_id=message_id, rnd=rnd)
    if not 1 <= update.num_examples <= fmt.capacity:
        raise Rejected(Reason.NUM_EXAMPLES, f"must be in [1, {fmt.capacity}]", field="body.num_examples")
    groups = check_groups(update, spec)
    check_metrics(update, spec)
    return Update(
        update.device_id,
        {g: [t.array for t in tensors] for g, tensors in groups.items()},
        update.num_examples,
        update.metrics,
    )


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


def wire_order(spec: UpdateSpec) -> list[tuple[str, str]]:
    """(group, tensor) in wire order: the weights first, then each other group by name."""
    order = sorted(spec.groups, key=lambda g: (g != WEIGHTS, g))
    return [(g, name) for g in order for name in spec.groups[g].names]


def check_groups(update: ModelUpdate, spec: UpdateSpec) -> dict[str, list[Tensor]]:
    """The update's tensors by group, or ``Rejected`` (``shape``) naming the first wire tensor whose
    name, place, dtype or shape is not what ``spec`` declares. Metadata only: no value is read."""
    expected = wire_order(spec)
    names = [t.name for t in update.tensors]
    wanted = [qualified(g, n) for g, n in expected]
    if names != wanted:
        where = next((i for i, (a, b) in enumerate(zip(names, wanted, strict=False)) if a != b), None)
        if where is None:
            raise Rejected(
                Reason.SHAPE,
                f"{len(names)} tensors, the job's strategy expects {len(wanted)}: {wanted[len(names) :][:3]}"
                if len(names) < len(wanted)
                else f"{len(names)} tensors, the job's strategy expects {len(wanted)}",
                field="body.tensors",
            )
        raise Rejected(
            Reason.SHAPE,
            f"tensor {names[where]!r} where the job's strategy expects {wanted[where]!r}",
            field=f"body.tensors[{where}].name",
        )
    for i, (tensor, (group, name)) in enumerate(zip(update.tensors, expected, strict=True)):
        at = f"body.tensors[{i}]"
        if tensor.dtype != MODEL_DTYPE:
            raise Rejected(Reason.SHAPE, f"dtype {tensor.dtype} != {MODEL_DTYPE}", field=f"{at}.dtype")
        shape = spec.groups[group].shapes[spec.groups[group].names.index(name)]
        if tuple(tensor.array.shape) != tuple(shape):
            raise Rejected(
                Reason.SHAPE, f"shape {tuple(tensor.array.shape)} != {tuple(shape)}", field=f"{at}.shape"
            )
    groups = split_groups(update.tensors, spec.groups)
    # An empty group (FedPer sharing nothing, say) has no tensors on the wire to split out.
    return {g: groups.get(g, []) for g in spec.groups}


def check_metrics(update: ModelUpdate, spec: UpdateSpec) -> None:
    """``Rejected`` (``metric``) naming the first metric the spec requires that is missing or wrong."""
    for name, metric in spec.metrics.items():
        try:
            metric.check(name, update.metrics.get(name))
        except InvalidUpdateError as exc:
            raise Rejected(Reason.METRIC, str(exc), field=f"body.{exc.field}") from exc


def check_values(update: Update, spec: UpdateSpec) -> None:
    """``Rejected`` (``out_of_range``) unless every value of every group is within the spec's range."""
    try:
        for group, group_spec in spec.groups.items():
            group_spec.check(group, update.groups[group])
    except InvalidUpdateError as exc:
        raise out_of_range(exc, spec) from exc


def check_capacity(sums: RoundSums, spec: UpdateSpec, num_examples: int) -> None:
    """``Rejected`` unless every group's sum has room for the update's weight: checked for all
    groups before any is added, so a full sum cannot leave the others added to."""
    for group, acc in sums.sums.items():
        weight = num_examples if spec.groups[group].weighting == "examples" else 1
        if acc.total_weight + weight > acc.fmt.capacity:
            raise Rejected(
                Reason.OUT_OF_RANGE,
                f"round total {acc.total_weight} + {weight} exceeds the capacity {acc.fmt.capacity}",
                field="body.num_examples",
            )


def out_of_range(exc: InvalidUpdateError, spec: UpdateSpec) -> Rejected:
    """A range refusal (the spec's ``groups.<g>.<tensor>``, or the sum's own, which names a weight
    or ``num_examples``) as a rejection naming the wire field, as every other rejection does."""
    order = wire_order(spec)
    field = exc.field or ""
    if field == "num_examples":
        return Rejected(Reason.OUT_OF_RANGE, str(exc), field="body.num_examples")
    if field.startswith("groups."):
        group, _, name = field.removeprefix("groups.").partition(".")
    else:
        group, name = WEIGHTS, field
    if (group, name) in order:
        field = f"body.tensors[{order.index((group, name))}].data"
    return Rejected(Reason.OUT_OF_RANGE, str(exc), field=field)


def admit_stream(
    msg: Message,
    chunk: ModelChunk,
    rounds: Mapping[tuple[str, int], OpenRound],
    jobs: Mapping[str, Job],
    framing_bytes: int,
) -> None:
    """A chunked update may open a stream only for a round it was selected for, with the
    size the job's update spec gives (within the body's own framing)."""
    sender, round_ = msg.header.sender, msg.header.round
    candidates = [r for r in rounds.values() if r.round == round_]
    if not candidates:
        raise Rejected(Reason.WRONG_ROUND, f"no open round {round_} to stream an update to", field="round")
    mine = [r for r in candidates if sender in r.devices]
    if not mine:
        raise Rejected(Reason.UNSELECTED, f"{sender!r} was not selected for round {round_}")
    for rnd in mine:
        job = jobs.get(rnd.job_id)
        if job is None:
            continue
        floor = job.spec.data_bytes()  # every group's tensors (SCAFFOLD: twice the model)
        if floor <= chunk.size <= floor + framing_bytes:
            return
    raise Rejected(
        Reason.SHAPE,
        f"a stream of {chunk.size} bytes does not fit the update spec of round {round_}",
        field="body.size",
    )
