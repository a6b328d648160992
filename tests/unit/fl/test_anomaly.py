"""The flag rule and the k-of-m quarantine rule, on hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.fl import JobSpec, Update
from qflare.fl.anomaly import FLAG_REASONS, flag_updates, quarantine_due
from qflare.fl.strategies._robust import Deltas, delta_scores
from qflare.fl.strategies.median import Median


def test_norm_flag_is_relative_to_the_rounds_median_norm() -> None:
    # Norms 1, 2, 3, 10: median 2.5, so with k = 3 the bar is 7.5 and only d's 10 is above it.
    scores = {
        "a": {"norm": 1.0, "cosine": 0.9},
        "b": {"norm": 2.0, "cosine": 0.8},
        "c": {"norm": 3.0, "cosine": 0.7},
        "d": {"norm": 10.0, "cosine": 0.6},
    }
    assert flag_updates(scores, norm_k=3.0, min_cosine=0.0) == {"d": ("norm",)}
    # k = 4 puts the bar at 10: strictly above is needed, so 10 is not flagged.
    assert flag_updates(scores, norm_k=4.0, min_cosine=0.0) == {}


def test_cosine_flag_and_both_rules_in_fixed_order() -> None:
    scores = {
        "a": {"norm": 1.0, "cosine": 0.5},
        "b": {"norm": 1.0, "cosine": 0.0},  # on the bar: not below it
        "c": {"norm": 1.0, "cosine": -0.2},
        "d": {"norm": 9.0, "cosine": -1.0},
    }
    # Median norm 1, bar 3: d breaks both rules, listed norm first.
    assert flag_updates(scores, norm_k=3.0, min_cosine=0.0) == {"c": ("cosine",), "d": ("norm", "cosine")}
    assert flag_updates(scores, norm_k=3.0, min_cosine=0.6) == {
        "a": ("cosine",),
        "b": ("cosine",),
        "c": ("cosine",),
        "d": ("norm", "cosine"),
    }


def test_trust_flag_only_for_zero_trust() -> None:
    scores = {
        "a": {"norm": 1.0, "cosine": 0.9, "trust": 0.4},
        "b": {"norm": 1.0, "cosine": 0.9, "trust": 0.0},
    }
    assert flag_updates(scores, norm_k=3.0, min_cosine=0.0) == {"b": ("trust",)}
    assert set(FLAG_REASONS) == {"norm", "cosine", "trust"}


def test_all_zero_norms_flag_nothing_for_norm() -> None:
    # A round of free riders (every delta zero): no median to compare against, cosine 0 is not below 0.
    scores = {d: {"norm": 0.0, "cosine": 0.0} for d in "abc"}
    assert flag_updates(scores, norm_k=3.0, min_cosine=0.0) == {}
    assert flag_updates({}, norm_k=3.0, min_cosine=0.0) == {}


def test_flags_from_real_deltas_catch_sign_flip_and_scaling() -> None:
    # Four honest deltas near (1, 1), one flipped to (-1, -1), one scaled ×10; the aggregate is their
    # coordinate-wise median, as the median rule takes it.
    g = [np.zeros(2, np.float32)]
    rows = {
        "h1": [1.0, 1.0],
        "h2": [1.1, 0.9],
        "h3": [0.9, 1.1],
        "h4": [1.0, 1.2],
        "x-flip": [-1.0, -1.0],
        "y-scale": [10.0, 10.0],
    }
    updates = [Update(d, {"weights": [np.array(v, np.float32)]}, 1) for d, v in sorted(rows.items())]
    deltas = Deltas(updates, g)
    step = [np.median(np.array([rows[d] for d in sorted(rows)], np.float64), axis=0)]
    scores = delta_scores(deltas, step, {})
    assert scores["x-flip"]["cosine"] == pytest.approx(-1.0, abs=1e-3)  # the median is (1, 1.05)
    assert scores["y-scale"]["norm"] == pytest.approx(10 * np.sqrt(2))
    assert flag_updates(scores, norm_k=3.0, min_cosine=0.0) == {"x-flip": ("cosine",), "y-scale": ("norm",)}


def test_robust_rule_scores_feed_the_same_flags() -> None:
    job = JobSpec.model_validate({"strategy": {"name": "median"}, "min_clients": 5})
    rule = Median(job)
    g = [np.zeros(3, np.float32)]
    honest = [[1.0, 0.5, 0.2], [0.9, 0.6, 0.1], [1.1, 0.4, 0.3], [1.0, 0.5, 0.25]]
    updates = [Update(f"h{i}", {"weights": [np.array(v, np.float32)]}, 10) for i, v in enumerate(honest)]
    updates.append(Update("z", {"weights": [np.array([-5.0, -2.5, -1.0], np.float32)]}, 10))
    scores = rule.scores(rule.initial_state(), updates, g)
    assert set(scores) == {"h0", "h1", "h2", "h3", "z"}
    assert flag_updates(scores, norm_k=3.0, min_cosine=0.0) == {"z": ("norm", "cosine")}


@pytest.mark.parametrize(
    ("history", "k", "m", "due"),
    [
        ([], 2, 3, False),
        ([True], 2, 3, False),
        ([True, True], 2, 3, True),
        ([True, False, True], 2, 3, True),
        # The flag four rounds ago has left the window of the last three.
        ([True, False, False, True], 2, 3, False),
        ([False, True, False, True], 2, 3, True),
        ([True, True, True, True, True], 0, 5, False),  # k = 0: quarantine is off
        ([True], 1, 1, True),
        ([True, False], 1, 1, False),
        ([True, True, True, False, False], 3, 5, True),
        ([True, True, False, False, False, True], 3, 5, False),
    ],
)
def test_quarantine_k_of_last_m(history: list[bool], k: int, m: int, due: bool) -> None:
    assert quarantine_due(history, k=k, m=m) is due
