"""The aggregator's server rules in ``qflare sim``: declared-size weighting, flags, quarantine, the gate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from qflare.fl import JobSpec
from qflare.fl.arrays import NDArrays
from qflare.fl.job import TrainConfig
from qflare.fl.spec import WEIGHTS
from qflare.ml.rootset import root_indices
from qflare.sim import CentralEvaluation, Simulation, device_ids
from qflare.sim.rules import declared_sizes, evaluation_split
from qflare.sim.trainers import DeviceResult


class _Shift:
    """Device i sends the global model + ``shift[i]`` everywhere and claims ``claims[i]`` examples."""

    def __init__(self, shift: Sequence[float], claims: Sequence[int]) -> None:
        self.shift, self.claims = shift, claims

    def train(
        self,
        round_no: int,
        devices: Sequence[int],
        weights: NDArrays,
        config: TrainConfig,
        server_groups: Mapping[str, NDArrays],
    ) -> list[DeviceResult]:
        return [
            DeviceResult({WEIGHTS: [w + np.float32(self.shift[i]) for w in weights]}, self.claims[i])
            for i in devices
        ]


class _Scripted(CentralEvaluation):
    """Accuracies handed out in order (the gate's decisions are then known exactly)."""

    def __init__(self, accuracies: Sequence[float]) -> None:
        self.accuracies = list(accuracies)

    def __call__(self, model: str, weights: NDArrays) -> tuple[float, float]:
        return 0.0, self.accuracies.pop(0)


def _job(**extra: object) -> JobSpec:
    base: dict[str, object] = {
        "model": "builtin:2nn",
        "rounds": 1,
        "fraction": 1.0,
        "min_clients": 3,
        "seed": 1,
        "evaluation": "central",
    }
    return JobSpec.parse({**base, **extra})


def _step(sim: Simulation, before: NDArrays) -> float:
    """How far the round moved the model (every coordinate moves alike here)."""
    return float(np.mean(sim.weights[0] - before[0]))


def _sim(job: JobSpec, shift: Sequence[float], claims: Sequence[int], declared: Sequence[int]) -> Simulation:
    ids = device_ids(len(shift))
    return Simulation(job, ids, _Shift(shift, claims), declared=declared_sizes(ids, declared))


def test_weights_are_declared_sizes_capped_at_k_times_the_median() -> None:
    # Declared 10, 10, 10, 100: the median is 10, so k = 3 caps the big one at 30.
    sim = _sim(_job(weight_cap=3.0), [1, 2, 3, 4], [10, 10, 10, 100], [10, 10, 10, 100])
    before = list(sim.weights)
    record = sim.round(1)
    assert record.rejected == 0 and record.participants == 4
    assert _step(sim, before) == pytest.approx((10 + 20 + 30 + 4 * 30) / 60, abs=1e-4)


def test_a_claim_above_the_declared_size_is_refused_and_counted() -> None:
    sim = _sim(_job(), [1, 2, 3, 4], [10, 10, 10, 2**27], [10, 10, 10, 10])
    before = list(sim.weights)
    record = sim.round(1)
    assert record.rejected == 1 and record.participants == 3
    assert record.to_json()["rejected"] == 1
    assert _step(sim, before) == pytest.approx(2.0, abs=1e-4)  # the liar's +4 is not in it


def test_a_refused_liar_spends_the_robust_rules_f_so_the_round_still_closes() -> None:
    # Median with f = 2 needs 5 updates; the liar's refusal leaves 4, of which at most one can be
    # faulty, so the round closes with f = 1 (the median of 1, 2, 3, 4).
    job = _job(strategy={"name": "median", "num_byzantine": 2}, min_clients=5, quorum=1.0)
    sim = _sim(job, [1, 2, 3, 4, 50], [10, 10, 10, 10, 2**27], [10] * 5)
    before = list(sim.weights)
    record = sim.round(1)
    assert record.rejected == 1 and record.unclosed is None and record.participants == 4
    assert _step(sim, before) == pytest.approx(2.5, abs=1e-4)
    # A device that merely failed proves nothing: its missing update leaves f = 2, below the bound.
    dropped = _sim(job, [1, 2, 3, 4, 50], [10, 10, 10, 10, 0], [10] * 5)
    assert "needs n ≥ 2f + 1" in (dropped.round(1).unclosed or "")


def test_equal_weighting_ignores_sizes_but_still_refuses_over_claims() -> None:
    sim = _sim(_job(weighting="equal"), [1, 2, 3, 4], [10, 10, 10, 100], [10, 10, 10, 100])
    before = list(sim.weights)
    assert sim.round(1).rejected == 0
    assert _step(sim, before) == pytest.approx(2.5, abs=1e-4)
    liar = _sim(_job(weighting="equal"), [1, 2, 3, 4], [10, 10, 10, 11], [10, 10, 10, 10])
    assert liar.round(1).rejected == 1


def test_without_declarations_each_update_weighs_its_own_claim() -> None:
    ids = device_ids(2)
    sim = Simulation(_job(min_clients=2), ids, _Shift([1, 4], [10, 20]))
    before = list(sim.weights)
    assert sim.round(1).rejected == 0
    assert _step(sim, before) == pytest.approx(3.0, abs=1e-4)


def test_a_robust_rule_flags_the_outlier_and_quarantine_stops_selecting_it() -> None:
    job = _job(strategy={"name": "median", "num_byzantine": 1}, rounds=2, quarantine_k=1, quarantine_m=2)
    ids = device_ids(5)
    sim = Simulation(
        job,
        ids,
        _Shift([1, 1, 1, 1, -10], [10] * 5),
        declared=declared_sizes(ids, [10] * 5),
        attackers=frozenset({ids[4]}),
    )
    first = sim.round(1)
    assert first.flags is not None and first.flags.devices == (ids[4],)
    assert first.flags.attackers == 1 and first.to_json()["flagged_attackers"] == 1
    assert first.participants == 5 and first.suspended == 1
    second = sim.round(2)
    assert second.participants == 4  # the flagged device is no longer selected
    assert second.flags is not None and second.flags.flagged == 0


def test_fedavg_gives_no_flags() -> None:
    record = _sim(_job(), [1, 2, 3], [10] * 3, [10] * 3).round(1)
    assert record.flags is None and "flagged" not in record.to_json()


def test_the_gate_holds_a_candidate_that_drops_too_far_and_promotes_one_that_does_not() -> None:
    ids = device_ids(3)
    # Round 1: candidate 0.85 against the published 0.90 (a 5-point drop); round 2: 0.895.
    sim = Simulation(
        _job(gate_max_drop=0.02, rounds=2),
        ids,
        _Shift([1, 1, 1], [10] * 3),
        _Scripted([0.85, 0.90, 0.895]),
        declared=declared_sizes(ids, [10] * 3),
    )
    start = [w.copy() for w in sim.weights]
    held = sim.round(1)
    assert held.held and held.accuracy == 0.90 and held.candidate_accuracy == 0.85
    assert all((a == b).all() for a, b in zip(sim.weights, start, strict=True))
    promoted = sim.round(2)
    assert not promoted.held and promoted.accuracy == 0.895
    assert _step(sim, start) == pytest.approx(1.0, abs=1e-4)


def test_fltrust_is_evaluated_without_its_root_set() -> None:
    images = np.arange(1000, dtype=np.uint8).reshape(1000, 1, 1)
    labels = np.arange(1000, dtype=np.int64)
    kept_images, kept = evaluation_split(_job(strategy={"name": "fltrust"}), images, labels)
    assert len(kept) == 900 and len(kept_images) == 900
    assert not set(kept.tolist()) & set(root_indices(1000).tolist())
    _, everything = evaluation_split(_job(), images, labels)
    assert len(everything) == 1000
