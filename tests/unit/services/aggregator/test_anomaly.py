"""Scoring a buffered round at its close: robust rules score themselves, other buffered strategies by
their published aggregate; what the round-complete metrics and the audit detail carry; quarantine
refused for streaming strategies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl import JobSpec, Update, build_strategy
from qflare.fl.buffer import UpdateBuffer
from services.aggregator.anomaly import Assessment, Scored, score_round
from services.aggregator.jobs import Job

BASE: dict[str, Any] = {"model": "builtin:2nn", "min_clients": 5}


def _updates(rows: dict[str, list[float]], steps: float = 3.0) -> list[Update]:
    return [
        Update(d, {"weights": [np.array(v, np.float32)]}, 10, {"local_steps": steps})
        for d, v in sorted(rows.items())
    ]


ROWS = {"a": [1.0, 1.0], "b": [1.2, 0.8], "c": [0.8, 1.2], "d": [1.0, 1.1], "e": [-4.0, -4.0]}
GLOBAL = [np.zeros(2, np.float32)]


def test_a_robust_rule_scores_through_its_own_scores() -> None:
    rule = build_strategy(JobSpec.model_validate({**BASE, "strategy": {"name": "trimmed_mean"}}))
    updates = _updates(ROWS)
    state = rule.initial_state()
    new, _ = rule.aggregate(state, updates, GLOBAL)
    scores = score_round(rule, state, updates, GLOBAL, new)
    assert scores == rule.scores(state, updates, GLOBAL)  # type: ignore[attr-defined]
    assert scores["e"]["cosine"] < 0 < scores["a"]["cosine"]


def test_another_buffered_strategy_scores_against_the_version_it_published() -> None:
    nova = build_strategy(JobSpec.model_validate({**BASE, "strategy": {"name": "fednova"}}))
    assert nova.mode == "buffered"
    updates = _updates(ROWS)
    new, _ = nova.aggregate(nova.initial_state(), updates, GLOBAL)
    step = np.asarray(new[0], np.float64)
    # A spilled buffer gives the same scores as the updates in memory.
    with UpdateBuffer(0) as spilled:
        for u in updates:
            spilled.add(u)
        scores = score_round(nova, nova.initial_state(), spilled, GLOBAL, new)
    for u in updates:
        delta = np.asarray(u.weights[0], np.float64)
        cos = float(delta @ step) / (np.linalg.norm(delta) * np.linalg.norm(step))
        assert scores[u.device_id]["norm"] == pytest.approx(np.linalg.norm(delta))
        assert scores[u.device_id]["cosine"] == pytest.approx(cos)
    assert set(scores["a"]) == {"norm", "cosine"}


def test_round_metrics_and_audit_detail() -> None:
    found = Assessment(
        "j",
        4,
        (
            Scored("a", b"\x01" * 16, {"norm": 1.0, "cosine": 0.5}, 10, ()),
            Scored("b", None, {"norm": 3.0, "cosine": 0.9}, 10, ()),
            Scored(
                "x", b"\x02" * 16, {"norm": 9.0, "cosine": -0.7, "trimmed": math.inf}, 30, ("norm", "cosine")
            ),
        ),
        quarantine_k=2,
        quarantine_m=3,
    )
    assert found.metrics() == {"flagged_updates": 1.0, "anomaly_norm_median": 3.0, "anomaly_cosine_min": -0.7}
    assert [s.device_id for s in found.flagged] == ["x"]
    assert found.updates[2].detail("j", 4) == {
        "job_id": "j",
        "round": 4,
        "norm": 9.0,
        "cosine": -0.7,
        "trimmed": None,  # not finite: reported as nil
        "weight": 30,
        "flagged": True,
        "flags": "norm,cosine",
    }
    assert (
        found.updates[0].detail("j", 4)["flags"] == "" and found.updates[0].detail("j", 4)["flagged"] is False
    )
    # The round-complete record's map: finite scores only, flagged as 1 or 0, for every update.
    assert found.record_scores() == {
        "a": {"norm": 1.0, "cosine": 0.5, "flagged": 0.0},
        "b": {"norm": 3.0, "cosine": 0.9, "flagged": 0.0},
        "x": {"norm": 9.0, "cosine": -0.7, "flagged": 1.0},
    }
    # Past a map's entry limit the flagged come first, then the rest in device-id order.
    assert list(found.record_scores(cap=2)) == ["x", "a"]
    # RFA's own score is called weight: published under another name, beside the update's weight.
    rfa = Scored("r", None, {"norm": 1.0, "cosine": 0.9, "weight": 0.2}, 7, ())
    assert rfa.detail("j", 4)["rule_weight"] == 0.2 and rfa.detail("j", 4)["weight"] == 7


def test_quarantine_needs_a_buffered_strategy() -> None:
    spec = JobSpec.model_validate({**BASE, "strategy": {"name": "fedavg"}, "quarantine_k": 2})
    with pytest.raises(ConfigError) as refused:
        Job("j", spec, "running")
    assert refused.value.field == "body.config.quarantine_k"
    # Off, or with a buffered rule, the job starts.
    Job("j", JobSpec.model_validate({**BASE, "strategy": {"name": "fedavg"}}), "running")
    Job("j", JobSpec.model_validate({**BASE, "strategy": {"name": "median"}, "quarantine_k": 2}), "running")
