"""Each robust rule on a case worked by hand: five scalar updates, one of them an outlier."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.fl.strategies.bulyan import bulyan_select
from qflare.fl.strategies.centered_clip import centered_clip
from qflare.fl.strategies.krum import krum_scores
from qflare.fl.strategies.rfa import weiszfeld
from tests.unit.fl.strategies.helpers import f32, update
from tests.unit.fl.strategies.robust_helpers import one_round, robust, scalars

OUTLIER = scalars(1, 2, 3, 4, 100)


def test_median() -> None:
    assert one_round(robust("median", 5), OUTLIER) == 3.0
    assert one_round(robust("median", 4), scalars(1, 2, 3, 100)) == 2.5  # even n: mean of the middle two


def test_median_moves_from_the_global_model() -> None:
    # Deltas from w = 10 are (-9, -8, -7, -6, 90): their median -7 added to 10.
    assert one_round(robust("median", 5), OUTLIER, [f32(10.0)]) == 3.0


def test_trimmed_mean() -> None:
    assert one_round(robust("trimmed_mean", 5, beta=0.2), OUTLIER) == 3.0  # k = 1: mean(2, 3, 4)
    assert one_round(robust("trimmed_mean", 5, beta=0.1), OUTLIER) == 22.0  # k = 0: the plain mean
    strategy = robust("trimmed_mean", 5, beta=0.2)
    scores = strategy.scores(strategy.initial_state(), OUTLIER, [f32(0.0)])
    assert [scores[d]["trimmed"] for d in sorted(scores)] == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_krum_and_multikrum() -> None:
    # f = 1, n = 5: each score sums the 2 nearest squared distances: 1 -> 5, 2 -> 2, 3 -> 2, 4 -> 5,
    # 100 -> 96² + 97² = 18625. Krum takes the first lowest (2).
    x = np.array([1, 2, 3, 4, 100.0])
    assert krum_scores((x[:, None] - x[None, :]) ** 2, 1).tolist() == [5.0, 2.0, 2.0, 5.0, 18625.0]
    assert one_round(robust("krum", 5), OUTLIER) == 2.0
    assert one_round(robust("multikrum", 5, m=3), OUTLIER) == 2.0  # 2, 3, then 1 before 4 (ties by order)
    assert one_round(robust("multikrum", 5), OUTLIER) == 2.5  # m = n - f = 4: mean(1, 2, 3, 4)
    strategy = robust("krum", 5)
    scores = strategy.scores(strategy.initial_state(), OUTLIER, [f32(0.0)])
    assert scores["d4"]["krum_score"] == 18625.0 and scores["d1"]["selected"] == 1.0
    assert scores["d4"]["selected"] == 0.0 and scores["d4"]["norm"] == 100.0


def test_bulyan() -> None:
    # f = 1, n = 7: Krum picks 3, 4, 2, 5, 1 in turn (see the module); the median of those is 3 and the
    # θ - 2f = 3 values nearest it are 2, 3, 4.
    values = [1.0, 2, 3, 4, 5, 6, 1000]
    x = np.array(values)
    assert bulyan_select((x[:, None] - x[None, :]) ** 2, 1) == [0, 1, 2, 3, 4]
    assert one_round(robust("bulyan", 7), scalars(*values)) == 3.0


def test_rfa() -> None:
    # Deltas 0, 0, 0, 10. Start at the mean 2.5; distances 2.5 (x3) and 7.5 give
    # v = 10 (1/7.5) / (3/2.5 + 1/7.5) = 1 after one iteration; more iterations approach the median 0.
    assert one_round(robust("rfa", 4, iterations=1), scalars(0, 0, 0, 10)) == pytest.approx(1.0, abs=1e-6)
    assert abs(one_round(robust("rfa", 4, iterations=50), scalars(0, 0, 0, 10))) < 1e-4
    gram = np.outer([0, 0, 0, 10.0], [0, 0, 0, 10.0])
    assert weiszfeld(gram, np.full(4, 0.25), 1e-6, 1).tolist() == pytest.approx([0.3, 0.3, 0.3, 0.1])


def test_averaging_rules_weigh_what_they_keep_by_the_server_owned_weights() -> None:
    # Weights 1, 3, 1, 1, 4 (what the server fixed; the outlier's weight buys it nothing it is not kept).
    weighted = scalars(1, 2, 3, 4, 100, examples=[1, 3, 1, 1, 4])
    # Multi-Krum keeps 1, 2, 3, 4: (1 + 6 + 3 + 4) / 6; the paper's plain mean is 2.5.
    assert one_round(robust("multikrum", 5), weighted) == pytest.approx(14 / 6, abs=1e-6)
    assert one_round(robust("multikrum", 5, weighted=False), weighted) == 2.5
    # Bulyan (f = 1, n = 7) keeps 2, 3, 4 per coordinate: weights 3, 1, 1 give (6 + 3 + 4) / 5.
    bulyan = scalars(1, 2, 3, 4, 5, 6, 1000, examples=[1, 3, 1, 1, 1, 1, 9])
    assert one_round(robust("bulyan", 7), bulyan) == pytest.approx(13 / 5, abs=1e-6)
    assert one_round(robust("bulyan", 7, weighted=False), bulyan) == 3.0
    # RFA starts from the weighted mean: deltas 0, 0, 0, 10 with weights 1, 1, 1, 3 start at 5; the
    # distances 5 (x4) give α / 5 and so the weighted mean again: 5 is a fixed point of one step.
    rfa = scalars(0, 0, 0, 10, examples=[1, 1, 1, 3])
    assert one_round(robust("rfa", 4, iterations=1), rfa) == pytest.approx(5.0, abs=1e-6)
    assert one_round(robust("rfa", 4, iterations=1, weighted=False), rfa) == pytest.approx(1.0, abs=1e-6)


def test_centered_clip_keeps_its_estimate_for_the_next_round() -> None:
    # τ = 1, from v = 0: (0.5 - 0.5 + clip(10) = 1) / 3.
    strategy = robust("centered_clip", 3, tau=1.0)
    updates = scalars(0.5, -0.5, 10)
    new, state = strategy.aggregate(strategy.initial_state(), updates, [f32(0.0)])
    assert new[0][0] == np.float32(1 / 3)
    assert state.arrays["prev.t0"].tolist() == pytest.approx([1 / 3])
    # Next round starts from v = 1/3: the deltas from w = 1/3 are (1/6, -5/6, 29/3); clipped around 1/3.
    new2, _ = strategy.aggregate(state, updates, new)
    d = np.array([0.5, -0.5, 10]) - float(new[0][0])
    v = 1 / 3 + np.mean([(x - 1 / 3) * min(1.0, 1.0 / abs(x - 1 / 3)) for x in d])
    assert float(new2[0][0]) == pytest.approx(float(new[0][0]) + v, abs=1e-6)
    e, factors = centered_clip(np.outer([0.5, -0.5, 10, 0], [0.5, -0.5, 10, 0]), 1.0, 1)
    assert factors.tolist() == [1.0, 1.0, 0.1] and e[:3] @ [0.5, -0.5, 10] == pytest.approx(1 / 3)


def test_norm_bound() -> None:
    # M = 1: 0.5 stays, 4 -> 1, -2 -> -1; weights 1, 1, 2 examples: 0.125 + 0.25 - 0.5.
    strategy = robust("norm_bound", 3, max_norm=1.0)
    assert one_round(strategy, scalars(0.5, 4, -2, examples=[1, 1, 2])) == -0.125
    scores = strategy.scores(strategy.initial_state(), scalars(0.5, 4, -2), [f32(0.0)])
    assert [scores[d]["clip"] for d in ("d0", "d1", "d2")] == [1.0, 0.25, 0.5]


def test_fltrust() -> None:
    # g0 = (1, 0). (3, 4): cos 0.6, rescaled (0.6, 0.8). (0, -2): cos 0, trust 0. (2, 0): cos 1 -> (1, 0).
    # (0.6 (0.6, 0.8) + 1 (1, 0)) / 1.6 = (0.85, 0.3).
    strategy = robust("fltrust", 3, server=[np.array([1.0, 0.0])])
    updates = [update("a", [f32(3, 4)], 1), update("b", [f32(0, -2)], 1), update("c", [f32(2, 0)], 1)]
    new, _ = strategy.aggregate(strategy.initial_state(), updates, [f32(0, 0)])
    assert new[0].tolist() == pytest.approx([0.85, 0.3])
    scores = strategy.scores(strategy.initial_state(), updates, [f32(0, 0)])
    assert [scores[d]["trust"] for d in "abc"] == pytest.approx([0.6, 0.0, 1.0])
    # Every update against the server: no trust, no move.
    against = [update("a", [f32(-1, 0)], 1)]
    new, _ = robust("fltrust", 1, server=[np.array([1.0, 0.0])]).aggregate(
        strategy.initial_state(), against, [f32(5, 5)]
    )
    assert new[0].tolist() == [5.0, 5.0]
