"""Model attacks on tiny arrays: each transform checked against numbers worked out by hand."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from qflare.attacks import RoundView, alie_z, craft, parse_attack

G = [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)]
# This attacker trained to G + [1, -1], [[2]].
HONEST = [np.array([2.0, 1.0], np.float32), np.array([[2.0]], np.float32)]
# A second colluder trained to G + [3, 1], [[0]].
OTHER = [np.array([4.0, 3.0], np.float32), np.array([[0.0]], np.float32)]


def _view(**kw: object) -> RoundView:
    base: dict[str, object] = {"global_weights": G, "honest": HONEST, "num_examples": 50}
    base.update(kw)
    return RoundView(**base)  # type: ignore[arg-type]


def _flat(ws: list[np.ndarray]) -> list[float]:
    return [float(x) for w in ws for x in w.ravel()]


def test_sign_flip_sends_the_global_model_minus_the_update() -> None:
    sent, n = craft(parse_attack("sign_flip"), _view())
    assert _flat(sent) == [0.0, 3.0, -2.0]
    assert n == 50
    assert all(w.dtype == np.float32 and w.shape == g.shape for w, g in zip(sent, G, strict=True))


def test_scaling_multiplies_the_update_by_its_factor() -> None:
    sent, _ = craft(parse_attack("scaling", {"factor": 3}), _view())
    assert _flat(sent) == [4.0, -1.0, 6.0]


def test_gaussian_sends_noise_around_the_global_model_seeded() -> None:
    attack = parse_attack("gaussian", {"sigma": 0.5})
    a, _ = craft(attack, _view(rng=np.random.default_rng(3)))
    b, _ = craft(attack, _view(rng=np.random.default_rng(3)))
    assert _flat(a) == _flat(b)
    expected = np.random.default_rng(3).normal(0, 0.5, size=2) + np.array([1.0, 2.0])
    np.testing.assert_allclose(a[0], expected, rtol=1e-6)
    big, _ = craft(parse_attack("gaussian", {"sigma": 0.0}), _view(rng=np.random.default_rng(1)))
    assert _flat(big) == _flat(G)


def test_alie_z_follows_the_paper() -> None:
    # n = 50, f = 12 (Baruch et al.'s example): s = 26 - 12 = 14, z = Φ⁻¹(36/50).
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(36 / 50))
    assert alie_z(10, 2) == pytest.approx(NormalDist().inv_cdf(0.6))
    assert alie_z(4, 0) == 0.0  # no attackers: no shift


def test_alie_is_the_colluders_mean_minus_z_std() -> None:
    # Deltas [1, -1, 2] and [3, 1, 0]: mean [2, 0, 1], std [1, 1, 1]; z = 0.5.
    sent, _ = craft(parse_attack("alie", {"z": 0.5}), _view(colluders=[HONEST, OTHER], selected=10))
    assert _flat(sent) == pytest.approx([1 + 2 - 0.5, 2 + 0 - 0.5, 0 + 1 - 0.5])
    # z from n and f when not given.
    z = alie_z(10, 2)
    sent, _ = craft(parse_attack("alie"), _view(colluders=[HONEST, OTHER], selected=10))
    assert _flat(sent) == pytest.approx([3 - z, 2 - z, 1 - z], rel=1e-6)


def test_ipm_sends_minus_epsilon_times_the_colluders_mean() -> None:
    sent, _ = craft(parse_attack("ipm", {"epsilon": 0.5}), _view(colluders=[HONEST, OTHER]))
    assert _flat(sent) == pytest.approx([1 - 1.0, 2.0, -0.5])


def test_sybils_all_send_the_same_update() -> None:
    attack = parse_attack("sybil", {"scale": 2})
    a, _ = craft(attack, _view(colluders=[HONEST, OTHER]))
    b, _ = craft(attack, _view(honest=OTHER, colluders=[HONEST, OTHER]))
    assert _flat(a) == _flat(b) == pytest.approx([1 - 4.0, 2.0, -2.0])


def test_a_lone_colluder_uses_its_own_update() -> None:
    sent, _ = craft(parse_attack("ipm", {"epsilon": 1}), _view())
    assert _flat(sent) == [0.0, 3.0, -2.0]


def test_free_rider_returns_the_global_model() -> None:
    sent, n = craft(parse_attack("free_rider"), _view())
    assert _flat(sent) == _flat(G) and n == 50


def test_the_liar_sends_honest_weights_and_a_huge_count() -> None:
    sent, n = craft(parse_attack("num_examples_liar"), _view())
    assert _flat(sent) == _flat(HONEST) and n == 2**27
    assert craft(parse_attack("num_examples_liar", {"claim": 7}), _view())[1] == 7


def test_data_attacks_send_what_they_trained_the_backdoor_boosted() -> None:
    assert _flat(craft(parse_attack("label_flip"), _view())[0]) == _flat(HONEST)
    sent, _ = craft(parse_attack("backdoor", {"boost": 2}), _view())
    assert _flat(sent) == [3.0, 0.0, 4.0]
