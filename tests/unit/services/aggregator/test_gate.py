"""The publication gate's rule: promote unless the central accuracy fell by more than the margin."""

from __future__ import annotations

import pytest

from services.aggregator.gate import judge

ROUND = {"participants": 3.0, "test_accuracy": 0.62, "test_loss": 1.4, "evaluated_version": 4.0}


def test_a_drop_within_the_margin_is_promoted_and_reported() -> None:
    verdict = judge(0.05, ROUND, {"test_accuracy": 0.66, "test_loss": 1.2}, 3)
    assert not verdict.held
    assert verdict.metrics["base_accuracy"] == 0.66
    assert verdict.metrics["gate_drop"] == pytest.approx(0.04)
    assert verdict.metrics["test_accuracy"] == 0.62 and verdict.metrics["evaluated_version"] == 4.0


def test_an_improvement_is_promoted() -> None:
    assert not judge(0.0, ROUND, {"test_accuracy": 0.5}, 3).held


def test_a_larger_drop_is_held_and_the_metrics_describe_the_version_that_stays() -> None:
    verdict = judge(0.02, ROUND, {"test_accuracy": 0.9, "test_loss": 0.3}, 3)
    assert verdict.held
    m = verdict.metrics
    assert (m["candidate_accuracy"], m["candidate_loss"]) == (0.62, 1.4)
    assert (m["base_accuracy"], m["test_accuracy"], m["test_loss"]) == (0.9, 0.9, 0.3)
    assert m["gate_drop"] == pytest.approx(0.28)
    assert m["evaluated_version"] == 3.0 and m["participants"] == 3.0


def test_without_both_accuracies_the_gate_cannot_judge_and_promotes() -> None:
    for candidate, base in (({}, {"test_accuracy": 0.9}), (ROUND, {})):
        verdict = judge(0.02, candidate, base, 3)
        assert not verdict.held and verdict.metrics["gate_unchecked"] == 1.0
