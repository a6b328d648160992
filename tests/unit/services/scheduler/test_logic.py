"""The scheduler's round lifecycle, without Kafka."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import pytest

from qflare.errors import ConfigError
from qflare.fl import FedAvg, JobSpec, StrategyParams, TrainConfig, register_strategy
from qflare.fl import job as job_module
from qflare.fl.registry import STRATEGIES
from services.scheduler.logic import Progress, after_complete, overdue, quorum, select, task_config


def test_selection_is_c_times_k_seeded_and_needs_min_clients() -> None:
    cfg = JobSpec(fraction=0.1, min_clients=2, seed=7)
    devices = [f"d{i:03d}" for i in range(100)]
    first = select(devices, cfg, 1)
    assert first is not None and len(first) == 10 and set(first) <= set(devices)
    assert select(list(reversed(devices)), cfg, 1) == first  # order-independent, reproducible
    assert select(devices, cfg, 2) != first
    assert select(devices[:1], cfg, 1) is None
    assert quorum(JobSpec(quorum=0.8), 10) == 8 and quorum(JobSpec(quorum=0.8), 1) == 1


def test_the_strategy_writes_the_round_task_config() -> None:
    spec = JobSpec.parse({"strategy": {"name": "fedprox", "proximal_mu": 0.2}, "lr": 0.1})
    config = task_config(spec, 1, ["a", "b"])
    assert TrainConfig.parse(config).proximal_mu == 0.2 and config["lr"] == 0.1
    assert "epoch" not in config  # the fencing token is RoundTask.fencing_token
    assert task_config(JobSpec(), 1, ["a"])["proximal_mu"] == 0.0


def test_per_device_instructions_are_refused_until_a_round_task_can_carry_them() -> None:
    class _SplitParams(StrategyParams):
        name: Literal["split"] = "split"

    @register_strategy
    class Split(FedAvg):
        name = "split"
        Params: ClassVar[type[StrategyParams]] = _SplitParams

        def configure_round(self, round: int, devices: Sequence[str]) -> dict[str, TrainConfig]:
            base = self.train_config(round)
            return {d: base.model_copy(update={"epochs": i + 1}) for i, d in enumerate(devices)}

    try:
        spec = JobSpec.parse({"strategy": {"name": "split"}})
        assert task_config(spec, 1, ["a"])["epochs"] == 1
        with pytest.raises(ConfigError):
            task_config(spec, 1, ["a", "b"])
    finally:
        del STRATEGIES["split"], job_module._PARAMS["split"]
        job_module._union = None


def test_completion_advances_retries_and_finishes() -> None:
    p = Progress("j", {"rounds": 2}, round=1, open=True)
    assert after_complete(p, 1, "completed", 1, {"test_accuracy": 0.9})
    assert p.model_version == 1 and p.completed_rounds == 1 and not p.open
    p.round, p.open = 2, True
    assert not after_complete(p, 1, "completed", 5, {})  # stale event for an old round: ignored
    assert after_complete(p, 2, "quorum_not_met", 1, {})  # retry with a fresh selection
    assert p.attempts == 1 and p.model_version == 1
    p.round, p.open = 3, True
    assert not after_complete(p, 3, "completed", 2, {})
    assert p.status == "done" and p.completed_rounds == 2


def test_a_held_round_counts_as_done_with_no_new_version() -> None:
    p = Progress("j", {"rounds": 3}, round=1, open=True)
    assert after_complete(p, 1, "completed", 1, {})
    p.round, p.open = 2, True
    assert after_complete(p, 2, "quorum_not_met", 1, {})
    assert p.attempts == 1
    p.round, p.open = 3, True
    # The gate refused round 3's version: the job goes on from version 1, attempts reset.
    assert after_complete(p, 3, "held", 1, {"test_accuracy": 0.2})
    assert p.model_version == 1 and p.completed_rounds == 2 and p.attempts == 0 and not p.open
    assert p.history[-1]["status"] == "held" and p.history[-1]["model_version"] == 1
    p.round, p.open = 4, True
    assert not after_complete(p, 4, "held", 1, {})  # the last round held: the job ends on version 1
    assert p.status == "done" and p.model_version == 1 and p.completed_rounds == 3
    assert Progress.from_dict(p.to_dict()) == p


def test_a_held_last_round_of_a_federated_job_evaluates_the_version_kept() -> None:
    p = Progress("j", {"rounds": 1, "evaluation": "federated"}, round=1, open=True, model_version=4)
    assert after_complete(p, 1, "held", 4, {})
    assert p.evaluating and p.model_version == 4 and p.status == "running"


def test_overdue_only_after_deadline_plus_grace() -> None:
    p = Progress("j", {}, open=True, deadline_ms=1000)
    assert not overdue(p, 1500, 1000)
    assert overdue(p, 2001, 1000)
    assert Progress.from_dict(p.to_dict()) == p


def test_a_federated_job_ends_with_an_evaluation_round_of_its_final_model() -> None:
    p = Progress("j", {"rounds": 1, "evaluation": "federated"}, round=1, open=True)
    assert after_complete(p, 1, "completed", 1, {"test_accuracy": 0.1, "evaluated_version": 0})
    assert p.evaluating and p.status == "running" and p.completed_rounds == 1
    spec = JobSpec.parse(p.config)
    config = task_config(spec, 2, ["a", "b"], evaluate_only=p.evaluating)
    assert config["train"] is False and config["evaluate_global"] is True
    p.round, p.open = 2, True
    assert after_complete(p, 2, "quorum_not_met", 1, {})  # the evaluation round is retried
    assert p.evaluating and p.completed_rounds == 1
    p.round, p.open = 3, True
    assert not after_complete(p, 3, "completed", 1, {"test_accuracy": 0.8, "evaluated_version": 1})
    assert p.status == "done" and p.model_version == 1 and p.completed_rounds == 1
    assert p.history[-1]["evaluated_version"] == 1
    assert Progress.from_dict(p.to_dict()) == p
