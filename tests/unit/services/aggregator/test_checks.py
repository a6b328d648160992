"""Each way an update can be wrong for its round has its own reason, checked cheapest first."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.crypto import generate_key
from qflare.errors import InvalidUpdateError, Rejected
from qflare.fl import WEIGHTS, FedAvg, FixedPoint, JobSpec, Update
from qflare.fl.evaluation import DeviceEvaluation
from qflare.ml import init_weights, tensor_names
from qflare.protocol import Tensor
from qflare.protocol.devices import Device
from qflare.protocol.training import ModelUpdate, RoundFailure, RoundTask
from qflare.reasons import Reason
from qflare.types import Scalar
from services.aggregator.checks import (
    check_answer,
    check_evaluation_reply,
    check_update,
    find_round,
    out_of_range,
)
from services.aggregator.models import Layout
from services.aggregator.rounds import Included, OpenRound, check_round_sender, known_faulty, weigh_answer
from services.aggregator.weights import DeviceBook, RoundWeighting

LAYOUT = Layout.of("2nn")
SPEC = FedAvg().update_spec(LAYOUT.names, LAYOUT.shapes)
FMT = FixedPoint()
MSG_ID = b"\x01" * 16


def _round() -> OpenRound:
    task = RoundTask("job", 3, 2, "fedavg", ("a", "b"), 10_000, 1, 1)
    state = FedAvg().begin_round(FedAvg().initial_state(), 3, LAYOUT.names, LAYOUT.shapes)
    return OpenRound.from_task(task, b"\x00" * 16, 0, state)


def _update(
    device: str = "a",
    *,
    round: int = 3,
    base: int = 2,
    n: int = 10,
    weights: list[np.ndarray] | None = None,
    names: list[str] | None = None,
) -> ModelUpdate:
    arrays = weights if weights is not None else init_weights("2nn", 1)
    tensors = tuple(Tensor.of(name, w) for name, w in zip(names or tensor_names("2nn"), arrays, strict=True))
    return ModelUpdate("job", round, device, base, n, tensors, {"loss": 0.5})


def _reason(
    update: ModelUpdate,
    rnd: OpenRound | None = None,
    *,
    sender: str = "a",
    header_round: int | None = 3,
    message_id: bytes = MSG_ID,
) -> str:
    rnd = rnd or _round()
    with pytest.raises(Rejected) as caught:
        found = find_round(update, sender=sender, header_round=header_round, rounds={rnd.key: rnd})
        check_update(update, message_id=message_id, rnd=found, spec=SPEC, fmt=FMT)
    return caught.value.reason


def test_a_good_update_passes() -> None:
    rnd = _round()
    found = find_round(_update(), sender="a", header_round=3, rounds={rnd.key: rnd})
    check_update(_update(), message_id=MSG_ID, rnd=found, spec=SPEC, fmt=FMT)


def test_identity_and_round_reasons() -> None:
    assert _reason(_update("b"), sender="a") == "sender_mismatch"
    assert _reason(_update(), header_round=4) == "wrong_round"
    assert _reason(_update(round=4), header_round=4) == "wrong_round"
    assert _reason(_update("c"), sender="c") == "unselected"
    assert _reason(_update(base=1)) == "wrong_version"


def test_second_update_is_a_duplicate_and_the_same_one_a_replay() -> None:
    rnd = _round()
    rnd.include(Included("a", MSG_ID, 10, 0.5))
    assert _reason(_update(), rnd) == "replay"
    assert _reason(_update(), rnd, message_id=b"\x02" * 16) == "duplicate"


def test_content_reasons() -> None:
    weights = init_weights("2nn", 1)
    assert _reason(_update(n=0)) == "num_examples"
    assert _reason(_update(weights=weights[:-1], names=tensor_names("2nn")[:-1])) == "shape"
    renamed = [*tensor_names("2nn")[:-1], "fc9.bias"]
    assert _reason(_update(names=renamed)) == "shape"
    assert _reason(_update(weights=[*weights[:-1], np.zeros(11, np.float32)])) == "shape"
    assert _reason(_update(weights=[w.astype(np.float16) for w in weights])) == "shape"


def test_values_are_not_read_here_the_decoder_and_the_sum_own_them() -> None:
    """Finiteness is the decoder's check (``test_intake``), the range the exact sum's: no third pass."""
    weights = init_weights("2nn", 1)
    nan = [w.copy() for w in weights]
    nan[2][0, 0] = np.nan
    rnd = _round()
    check_update(_update(weights=nan), message_id=MSG_ID, rnd=rnd, spec=SPEC, fmt=FMT)
    big = [w.copy() for w in weights]
    big[4][0, 0] = 2e6  # beyond the sum's 2**20
    check_update(_update(weights=big), message_id=MSG_ID, rnd=rnd, spec=SPEC, fmt=FMT)
    with pytest.raises(InvalidUpdateError) as caught:
        FedAvg().accumulate(rnd.sums, Update("a", {WEIGHTS: big}, 10))
    rejected = out_of_range(caught.value, SPEC)
    assert rejected.reason == Reason.OUT_OF_RANGE and rejected.field == "body.tensors[4].data"
    assert rnd.sums.count == 0


def _evaluation_round() -> OpenRound:
    config: dict[str, Scalar] = {"train": False, "evaluate_global": True}
    task = RoundTask("job", 3, 2, "fedavg", ("a", "b"), 10_000, 1, 1, config)
    state = FedAvg().begin_round(FedAvg().initial_state(), 3, LAYOUT.names, LAYOUT.shapes)
    return OpenRound.from_task(task, b"\x00" * 16, 0, state)


def test_an_evaluation_round_takes_replies_without_weights_only() -> None:
    rnd = _evaluation_round()
    assert rnd.evaluate_only and not _round().evaluate_only
    reply = ModelUpdate("job", 3, "a", 2, 0, (), {"eval_examples": 5.0, "eval_loss": 0.3})
    check_evaluation_reply(reply, message_id=MSG_ID, rnd=rnd)
    with pytest.raises(Rejected) as caught:
        check_evaluation_reply(_update(n=0), message_id=MSG_ID, rnd=rnd)
    assert caught.value.reason == Reason.SHAPE and caught.value.field == "body.tensors"
    with pytest.raises(Rejected) as caught:
        check_evaluation_reply(ModelUpdate("job", 3, "a", 2, 7, (), {}), message_id=MSG_ID, rnd=rnd)
    assert caught.value.reason == Reason.NUM_EXAMPLES
    with pytest.raises(Rejected) as caught:
        check_evaluation_reply(ModelUpdate("job", 3, "c", 2, 0, (), {}), message_id=MSG_ID, rnd=rnd)
    assert caught.value.reason == Reason.UNSELECTED
    # A training update without weights is refused as a bad layout.
    assert _reason(ModelUpdate("job", 3, "a", 2, 10, (), {})) == Reason.SHAPE


def test_the_round_combines_only_the_devices_that_evaluated() -> None:
    rnd = _evaluation_round()
    rnd.include(Included("a", b"1" * 16, 0, None, DeviceEvaluation(30, 1.0, {"accuracy": 0.5})))
    rnd.include(Included("b", b"2" * 16, 0, None, None))  # its evaluation failed
    got = rnd.federated_evaluation()
    assert got["test_accuracy"] == 0.5 and got["evaluated_examples"] == 30
    assert got["evaluated_devices"] == 1 and got["evaluated_version"] == 2


def _failure_reason(
    failure: RoundFailure, rnd: OpenRound, *, sender: str = "a", message_id: bytes = MSG_ID
) -> str:
    with pytest.raises(Rejected) as caught:
        found = find_round(failure, sender=sender, header_round=failure.round, rounds={rnd.key: rnd})
        check_answer(failure, message_id=message_id, rnd=found)
    return caught.value.reason


def test_a_failed_reply_is_checked_like_an_update() -> None:
    rnd = _round()
    failure = RoundFailure("job", 3, "a", 2, "ValueError", "boom")
    check_answer(failure, message_id=MSG_ID, rnd=rnd)
    assert _failure_reason(failure, rnd, sender="b") == Reason.SENDER_MISMATCH
    assert _failure_reason(RoundFailure("job", 9, "a", 2, "E", ""), rnd) == Reason.WRONG_ROUND
    assert _failure_reason(RoundFailure("job", 3, "c", 2, "E", ""), rnd, sender="c") == Reason.UNSELECTED
    assert _failure_reason(RoundFailure("job", 3, "a", 1, "E", ""), rnd) == Reason.WRONG_VERSION
    # One answer per device: a failure after an update, or the same failure again, is refused.
    rnd.include(Included("a", MSG_ID, 0, None, failure="ValueError"))
    assert _failure_reason(failure, rnd) == Reason.REPLAY
    assert _failure_reason(failure, rnd, message_id=b"\x02" * 16) == Reason.DUPLICATE
    assert _reason(_update(), rnd, message_id=b"\x03" * 16) == Reason.DUPLICATE


def test_a_device_suspended_mid_round_counts_as_answered_so_the_round_need_not_wait() -> None:
    book = DeviceBook()
    key = generate_key().public_key
    book.apply(Device("a", "active", key, 1, 1, revision=1))
    book.apply(Device("b", "suspended", key, 1, 1, revision=2))
    rnd = _round()
    check_round_sender(book, rnd, "a", MSG_ID)  # active: nothing recorded
    assert rnd.answer("a") is None
    rnd.include(Included("a", MSG_ID, 10, 0.5))
    assert rnd.decide(None) is None  # "b" has not answered
    for _ in range(2):  # a second refusal records nothing more
        with pytest.raises(Rejected) as err:
            check_round_sender(book, rnd, "b", b"\x02" * 16)
        assert err.value.reason == Reason.SUSPENDED
    assert list(rnd.failed) == ["b"] and rnd.failed["b"].failure == "suspended"
    assert len(rnd.pending) == 2
    assert rnd.decide(None) == "completed"  # decided at once, without waiting for the deadline


def test_an_over_claim_is_the_devices_answer_and_proves_it_faulty() -> None:
    book = DeviceBook()
    key = generate_key().public_key
    book.apply(Device("a", "active", key, 1, 1, revision=1, labels={"qflare.num_examples": "10"}))
    book.apply(Device("b", "active", key, 1, 1, revision=1, labels={"qflare.num_examples": "10"}))
    rnd = _round()
    weighting = RoundWeighting.open(JobSpec(), rnd.devices, book)
    honest = weigh_answer(rnd, _fl_update("a", 10), weighting, book, MSG_ID)
    assert honest.num_examples == 10 and rnd.answer("a") is None  # intake includes it, not this
    rnd.include(Included("a", MSG_ID, 10, 0.5))
    assert rnd.decide(None) is None and known_faulty(rnd) == 0
    with pytest.raises(Rejected) as err:
        weigh_answer(rnd, _fl_update("b", 11), weighting, book, b"\x02" * 16)
    assert err.value.reason == Reason.OVER_CLAIM
    assert rnd.failed["b"].failure == "over_claim" and known_faulty(rnd) == 1
    assert rnd.decide(None) == "completed"  # everyone answered: no wait for the deadline
    # An ordinary failed reply proves nothing about the device.
    rnd.include(Included("c", b"\x03" * 16, 0, None, failure="ValueError"))
    assert known_faulty(rnd) == 1


def _fl_update(device: str, n: int) -> Update:
    return Update(device, {WEIGHTS: [np.zeros(1, np.float32)]}, n, {})
