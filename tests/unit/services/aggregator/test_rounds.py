"""When a round closes, and what its completion reports."""

from __future__ import annotations

import math

from qflare.fl import FedAvg
from qflare.protocol.training import RoundTask
from services.aggregator.models import Layout
from services.aggregator.rounds import (
    COMPLETED,
    QUORUM_NOT_MET,
    Included,
    OpenRound,
    decide,
    round_metrics,
    train_loss,
)


def test_decide_all_in_closes_at_once_else_the_deadline_decides() -> None:
    selected = ["a", "b", "c"]
    assert decide(selected, ["a", "b", "c"], 2, 1000, 0) == COMPLETED
    assert decide(selected, ["a", "b", "c"], 2, 1000, None) == COMPLETED
    assert decide(selected, ["a", "b"], 2, 1000, 999) is None
    assert decide(selected, ["a", "b"], 2, 1000, None) is None  # no clock: only "all in" decides
    assert decide(selected, ["a", "b"], 2, 1000, 1000) == COMPLETED
    assert decide(selected, ["a"], 2, 1000, 1000) == QUORUM_NOT_MET
    assert decide(selected, [], 1, 1000, 5000) == QUORUM_NOT_MET
    # Everyone answered but fewer than the quorum exist: nothing more can come, so it completes.
    assert decide(["a"], ["a"], 3, 1000, 0) == COMPLETED
    assert decide([], [], 1, 1000, 0) is None


def test_train_loss_is_example_weighted_and_skips_devices_without_one() -> None:
    rows = [Included("b", b"", 300, 0.6), Included("a", b"", 600, 0.9), Included("c", b"", 100, None)]
    assert math.isclose(train_loss(rows) or 0, (0.9 * 600 + 0.6 * 300) / 900)
    assert train_loss([Included("c", b"", 100, None)]) is None


def test_round_metrics() -> None:
    task = RoundTask("job", 1, 0, "fedavg", ("a", "b", "c"), 10_000, 2, 1)
    layout = Layout.of("2nn")
    state = FedAvg().begin_round(FedAvg().initial_state(), 1, layout.names, layout.shapes)
    rnd = OpenRound.from_task(task, b"\x00" * 16, 1_000, state)
    rnd.include(Included("a", b"1", 10, 1.0))
    rnd.include(Included("b", b"2", 30, 2.0))
    rnd.count("bytes_in", 1234)
    rnd.count("rejected_shape")
    rnd.count("rejected_shape")
    m = round_metrics(rnd, 3_500, {"test_accuracy": 0.5, "test_loss": float("inf")})
    assert m["participants"] == 2 and m["selected"] == 3 and m["bytes_in"] == 1234
    assert m["duration_s"] == 2.5 and m["rejected_shape"] == 2
    assert m["train_loss"] == (10 * 1.0 + 30 * 2.0) / 40
    assert m["test_accuracy"] == 0.5 and "test_loss" not in m  # non-finite values cannot travel
    assert rnd.num_examples == 40 and [i.device_id for i in rnd.pending] == ["a", "b"]


def test_decide_failed_replies_are_answers_but_not_updates() -> None:
    selected = ["a", "b", "c"]
    # Everyone answered: decided at once, by the quorum of updates, as the deadline would.
    assert decide(selected, ["a", "b"], 2, 1000, None, failed=["c"]) == COMPLETED
    assert decide(selected, ["a"], 2, 1000, 0, failed=["b", "c"]) == QUORUM_NOT_MET
    assert decide(selected, [], 1, 1000, None, failed=selected) == QUORUM_NOT_MET
    # Someone has not answered: the deadline decides, failures count for nothing there.
    assert decide(selected, ["a"], 1, 1000, None, failed=["b"]) is None
    assert decide(selected, ["a"], 2, 1000, 1000, failed=["b"]) == QUORUM_NOT_MET


def test_a_failed_reply_is_kept_apart_from_the_updates() -> None:
    task = RoundTask("job", 1, 0, "fedavg", ("a", "b", "c"), 10_000, 2, 1)
    layout = Layout.of("2nn")
    state = FedAvg().begin_round(FedAvg().initial_state(), 1, layout.names, layout.shapes)
    rnd = OpenRound.from_task(task, b"\x00" * 16, 1_000, state)
    rnd.include(Included("a", b"1", 10, 1.0))
    rnd.include(Included("b", b"2", 30, 2.0))
    assert rnd.decide(None) is None
    rnd.include(Included("c", b"3", 0, None, failure="ValueError"))
    assert list(rnd.included) == ["a", "b"] and list(rnd.failed) == ["c"]
    assert rnd.answer("c") is rnd.failed["c"] and rnd.answer("d") is None
    assert [i.device_id for i in rnd.pending] == ["a", "b", "c"]
    assert rnd.decide(None) == COMPLETED
    m = round_metrics(rnd, 2_000)
    assert m["participants"] == 2 and m["failed_devices"] == 1 and rnd.num_examples == 40


def test_round_metrics_summarise_the_devices_personal_models() -> None:
    task = RoundTask("job", 1, 0, "ditto", ("a", "b", "c"), 10_000, 2, 1)
    layout = Layout.of("2nn")
    sums = FedAvg().begin_round(FedAvg().initial_state(), 1, layout.names, layout.shapes)
    rnd = OpenRound.from_task(task, b"\x00" * 16, 1_000, sums)
    rnd.include(Included("a", b"1", 10, 1.0, personal_accuracy=0.9))
    rnd.include(Included("b", b"2", 30, 2.0, personal_accuracy=0.6))
    rnd.include(Included("c", b"3", 30, 2.0))  # reported none: left out
    out = round_metrics(rnd, 2_000)
    assert out["personal_devices"] == 2.0
    assert abs(out["personal_accuracy_mean"] - 0.75) < 1e-12
    assert out["personal_accuracy_p10"] == 0.6
