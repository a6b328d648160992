"""Federated evaluation's pure parts: what a device reports, the weighted combination, job defaults."""

from __future__ import annotations

import pytest

from qflare.errors import ConfigError, SchemaError
from qflare.fl import JobSpec, TrainConfig, build_strategy
from qflare.fl.evaluation import (
    MAX_METRICS,
    DeviceEvaluation,
    combine,
    evaluation_round,
    is_evaluation_round,
    personal_accuracy,
    personal_summary,
)


def test_combination_is_weighted_by_examples() -> None:
    found = {
        "b": DeviceEvaluation(300, 0.9, {"accuracy": 0.7}),
        "a": DeviceEvaluation(100, 0.5, {"accuracy": 0.9, "f1": 0.8}),
        "c": DeviceEvaluation(600, 0.2, {"accuracy": 0.95}),
    }
    got = combine(found, version=4)
    # By hand: (0.5*100 + 0.9*300 + 0.2*600) / 1000 = (50 + 270 + 120) / 1000
    assert got["test_loss"] == pytest.approx(0.44)
    # (0.9*100 + 0.7*300 + 0.95*600) / 1000 = (90 + 210 + 570) / 1000
    assert got["test_accuracy"] == pytest.approx(0.87)
    assert got["test_f1"] == pytest.approx(0.8)  # only "a" reports it: over its examples alone
    assert got["evaluated_examples"] == 1000 and got["evaluated_devices"] == 3
    assert got["evaluated_version"] == 4
    assert combine({}, version=4) == {}


def test_combination_does_not_depend_on_arrival_order() -> None:
    found = {f"d{i}": DeviceEvaluation(i + 1, 0.1 * i + 0.013, {"accuracy": 1 / (i + 3)}) for i in range(20)}
    backwards = dict(reversed(list(found.items())))
    assert combine(found, 1) == combine(backwards, 1)


def test_a_reply_carries_its_evaluation_in_its_metrics() -> None:
    ev = DeviceEvaluation(50, 0.25, {"accuracy": 0.5})
    metrics = {"loss": 1.0, "val_loss": 2.0, **ev.to_metrics()}
    assert metrics["eval_examples"] == 50 and metrics["eval_accuracy"] == 0.5
    assert DeviceEvaluation.from_metrics(metrics) == ev
    # A failed or missing evaluation is no evaluation: the device is left out.
    assert DeviceEvaluation.from_metrics({"loss": 1.0}) is None
    assert DeviceEvaluation.from_metrics({"eval_examples": 0.0, "eval_loss": 1.0}) is None
    assert DeviceEvaluation.from_metrics({"eval_examples": 2.5, "eval_loss": 1.0}) is None
    assert DeviceEvaluation.from_metrics({"eval_examples": 3.0}) is None


def test_evaluation_defaults_to_central_for_builtins_and_federated_for_stored_models() -> None:
    assert JobSpec().evaluation == "central"
    assert JobSpec.parse({"model": "builtin:cnn"}).evaluation == "central"
    assert JobSpec.parse({"model": "my-net@3"}).evaluation == "federated"
    assert JobSpec.parse({"model": "my-net@3", "evaluation": "central"}).evaluation == "central"
    chosen = JobSpec.parse({"evaluation": "federated"})
    assert JobSpec.parse(chosen.to_wire()) == chosen
    with pytest.raises(SchemaError) as info:
        JobSpec.parse({"evaluation": "devices"})
    assert info.value.field == "config.evaluation"


def test_federated_jobs_ask_devices_to_evaluate_and_end_with_an_evaluation_round() -> None:
    spec = JobSpec.parse({"evaluation": "federated"})
    train = build_strategy(spec).train_config(1)
    assert train.evaluate_global and train.train
    assert not build_strategy(JobSpec()).train_config(1).evaluate_global
    final = evaluation_round(spec, train)
    assert final.evaluate_global and not final.train and not final.evaluate
    assert is_evaluation_round(final.to_config()) and not is_evaluation_round(train.to_config())
    assert TrainConfig.parse(final.to_config()) == final
    assert not is_evaluation_round({})  # a round task without the key trains
    with pytest.raises(ConfigError):
        evaluation_round(JobSpec(), train)


@pytest.mark.parametrize(
    "metrics",
    [
        {"eval_examples": 1e308, "eval_loss": 1.0},  # would overflow the weighted sums at close
        {"eval_examples": 10.0, "eval_loss": 1e300},
        {"eval_examples": 10.0, "eval_loss": 1.0, **{f"eval_m{i}": 0.5 for i in range(MAX_METRICS + 1)}},
    ],
)
def test_an_evaluation_past_the_bounds_is_left_out(metrics: dict[str, float]) -> None:
    assert DeviceEvaluation.from_metrics(metrics) is None
    honest = DeviceEvaluation.from_metrics({"eval_examples": 10.0, "eval_loss": 0.5, "eval_accuracy": 0.9})
    assert honest is not None and combine({"d": honest}, 1)["test_accuracy"] == 0.9


def test_personal_summary_reports_the_mean_and_the_worst_decile() -> None:
    accuracies = {f"d{i:02d}": 0.5 + i / 100 for i in range(20)}  # 0.50 .. 0.69
    out = personal_summary(accuracies)
    assert out["personal_devices"] == 20.0
    assert out["personal_accuracy_mean"] == pytest.approx(0.595)
    assert out["personal_accuracy_p10"] == pytest.approx((0.50 + 0.51) / 2)  # the worst 2 of 20
    assert personal_summary({"a": 0.9}) == {
        "personal_accuracy_mean": 0.9,
        "personal_accuracy_p10": 0.9,
        "personal_devices": 1.0,
    }
    assert personal_summary({}) == {}
    reordered = dict(reversed(list(accuracies.items())))
    assert personal_summary(reordered) == out


def test_personal_accuracy_must_be_a_fraction() -> None:
    assert personal_accuracy({"personal_accuracy": 0.75}) == 0.75
    assert personal_accuracy({"personal_accuracy": 1.5}) is None
    assert personal_accuracy({"personal_accuracy": float("nan")}) is None
    assert personal_accuracy({}) is None
