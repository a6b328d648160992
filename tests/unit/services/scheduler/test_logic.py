"""The scheduler's round lifecycle, without Kafka."""

from __future__ import annotations

import pytest

from qflare.errors import ConfigError
from services.scheduler.logic import JobConfig, Progress, after_complete, overdue, quorum, select


def test_config_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match=r"config\.fraction"):
        JobConfig.parse({"fraction": 1.5})
    with pytest.raises(ConfigError, match=r"config\.colour"):
        JobConfig.parse({"colour": "blue"})
    with pytest.raises(ConfigError, match=r"config\.rounds"):
        JobConfig.parse({"rounds": "ten"})
    assert JobConfig.parse({"lr": 1, "rounds": 3}).lr == 1.0


def test_selection_is_c_times_k_seeded_and_needs_min_clients() -> None:
    cfg = JobConfig(fraction=0.1, min_clients=2, seed=7)
    devices = [f"d{i:03d}" for i in range(100)]
    first = select(devices, cfg, 1)
    assert first is not None and len(first) == 10 and set(first) <= set(devices)
    assert select(list(reversed(devices)), cfg, 1) == first  # order-independent, reproducible
    assert select(devices, cfg, 2) != first
    assert select(devices[:1], cfg, 1) is None
    assert quorum(JobConfig(quorum=0.8), 10) == 8 and quorum(JobConfig(quorum=0.8), 1) == 1


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


def test_overdue_only_after_deadline_plus_grace() -> None:
    p = Progress("j", {}, open=True, deadline_ms=1000)
    assert not overdue(p, 1500, 1000)
    assert overdue(p, 2001, 1000)
    assert Progress.from_dict(p.to_dict()) == p
