"""The update checks follow the strategy's update spec: groups, order, dtypes, shapes, metrics, range."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import InvalidUpdateError, Rejected
from qflare.fl import CONTROL, WEIGHTS, FedAvg, FixedPoint, GroupSpec, MetricSpec, UpdateSpec
from qflare.protocol import Tensor
from qflare.protocol.training import ModelUpdate, RoundTask
from qflare.reasons import Reason
from services.aggregator.checks import (
    check_capacity,
    check_update,
    check_values,
    out_of_range,
    wire_order,
)
from services.aggregator.rounds import OpenRound

NAMES = ("w", "b")
SHAPES = ((2, 3), (3,))
FMT = FixedPoint()
MSG_ID = b"\x01" * 16
SPEC = UpdateSpec(
    {
        CONTROL: GroupSpec(NAMES, SHAPES, 10.0, "uniform"),
        WEIGHTS: GroupSpec(NAMES, SHAPES, 10.0),
        "aux": GroupSpec(("z",), ((1,),), 10.0),
    },
    {"local_steps": MetricSpec(1, 1000, integer=True)},
)


def _round() -> OpenRound:
    task = RoundTask("job", 3, 2, "fedavg", ("a", "b"), 10_000, 1, 1)
    return OpenRound.from_task(
        task, b"\x00" * 16, 0, FedAvg().begin_round(FedAvg().initial_state(), 3, NAMES, SHAPES)
    )


def _tensors(scale: float = 1.0) -> list[Tensor]:
    """Wire order: weights, then the other groups by name (aux, control)."""
    w = [np.full(s, scale, np.float32) for s in SHAPES]
    c = [np.full(s, -scale, np.float32) for s in SHAPES]
    return [
        Tensor.of("w", w[0]),
        Tensor.of("b", w[1]),
        Tensor.of("aux/z", np.zeros(1, np.float32)),
        Tensor.of("control/w", c[0]),
        Tensor.of("control/b", c[1]),
    ]


def _update(tensors: list[Tensor] | None = None, metrics: dict[str, float] | None = None) -> ModelUpdate:
    found = {"loss": 0.5, "local_steps": 12.0} if metrics is None else metrics
    return ModelUpdate("job", 3, "a", 2, 10, tuple(_tensors() if tensors is None else tensors), found)


def _rejected(update: ModelUpdate, spec: UpdateSpec = SPEC) -> Rejected:
    with pytest.raises(Rejected) as caught:
        check_update(update, message_id=MSG_ID, rnd=_round(), spec=spec, fmt=FMT)
    return caught.value


def test_a_good_update_becomes_an_update_with_every_group() -> None:
    got = check_update(_update(), message_id=MSG_ID, rnd=_round(), spec=SPEC, fmt=FMT)
    assert got.device_id == "a" and got.num_examples == 10 and got.metrics["local_steps"] == 12.0
    assert sorted(got.groups) == ["aux", CONTROL, WEIGHTS]
    assert [a.shape for a in got.groups[CONTROL]] == list(SHAPES)
    assert float(got.groups[CONTROL][0][0, 0]) == -1.0 and float(got.weights[1][0]) == 1.0
    check_values(got, SPEC)
    assert wire_order(SPEC)[:3] == [(WEIGHTS, "w"), (WEIGHTS, "b"), ("aux", "z")]


def test_missing_extra_and_misplaced_groups_are_shape_rejections_naming_the_tensor() -> None:
    tensors = _tensors()
    missing = _rejected(_update(tensors[:3]))
    assert missing.reason == Reason.SHAPE and missing.field == "body.tensors"
    extra = _rejected(_update([*tensors, Tensor.of("other/x", np.zeros(1, np.float32))]))
    assert extra.reason == Reason.SHAPE and extra.field == "body.tensors"
    # control before the weights: the order on the wire is part of the contract.
    swapped = _rejected(_update([*tensors[3:], *tensors[:3]]))
    assert swapped.reason == Reason.SHAPE and swapped.field == "body.tensors[0].name"
    renamed = _rejected(_update([*tensors[:3], Tensor.of("ctl/w", tensors[3].array), tensors[4]]))
    assert renamed.field == "body.tensors[3].name"


def test_dtype_and_shape_are_checked_in_every_group() -> None:
    tensors = _tensors()
    half = [*tensors[:4], Tensor.of("control/b", tensors[4].array.astype(np.float16))]
    assert _rejected(_update(half)).field == "body.tensors[4].dtype"
    wrong = [*tensors[:3], Tensor.of("control/w", np.zeros((3, 2), np.float32)), tensors[4]]
    got = _rejected(_update(wrong))
    assert got.reason == Reason.SHAPE and got.field == "body.tensors[3].shape"


def test_required_metrics_are_metric_rejections() -> None:
    for metrics in ({"loss": 0.5}, {"local_steps": 0.0}, {"local_steps": 2.5}, {"local_steps": 5000.0}):
        got = _rejected(_update(metrics=metrics))
        assert got.reason == Reason.METRIC and got.field == "body.metrics.local_steps", metrics


def test_values_beyond_the_spec_range_name_the_wire_tensor() -> None:
    tensors = _tensors()
    big = np.zeros((3,), np.float32)
    big[1] = 11.0
    update = check_update(
        _update([*tensors[:4], Tensor.of("control/b", big)]),
        message_id=MSG_ID,
        rnd=_round(),
        spec=SPEC,
        fmt=FMT,
    )
    with pytest.raises(Rejected) as caught:
        check_values(update, SPEC)
    assert caught.value.reason == Reason.OUT_OF_RANGE and caught.value.field == "body.tensors[4].data"


def test_the_sums_own_refusals_name_the_wire_field() -> None:
    spec = FedAvg().update_spec(NAMES, SHAPES)
    assert out_of_range(InvalidUpdateError("too big", field="b"), spec).field == "body.tensors[1].data"
    assert out_of_range(InvalidUpdateError("full", field="num_examples"), spec).field == "body.num_examples"
    spec_field = out_of_range(InvalidUpdateError("x", field="groups.control.w"), SPEC).field
    assert spec_field == "body.tensors[3].data"


def test_a_full_sum_is_refused_before_any_group_is_added() -> None:
    rnd = _round()
    spec = FedAvg().update_spec(NAMES, SHAPES)
    check_capacity(rnd.sums, spec, 10)
    rnd.sums.sums[WEIGHTS].total_weight = FMT.capacity - 5
    with pytest.raises(Rejected) as caught:
        check_capacity(rnd.sums, spec, 10)
    assert caught.value.reason == Reason.OUT_OF_RANGE and caught.value.field == "body.num_examples"


def test_a_weights_only_spec_checks_as_before() -> None:
    spec = FedAvg().update_spec(NAMES, SHAPES)
    update = ModelUpdate("job", 3, "a", 2, 10, tuple(_tensors()[:2]), {})
    got = check_update(update, message_id=MSG_ID, rnd=_round(), spec=spec, fmt=FMT)
    assert list(got.groups) == [WEIGHTS]
    assert spec.data_bytes() == 4 * 9 and SPEC.data_bytes() == 4 * 19
