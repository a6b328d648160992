"""Local solvers: step counts, SCAFFOLD's correction and control update, Ditto, FedPer, on tiny cases."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl.spec import CONTROL, WEIGHTS
from qflare.ml import init_weights, tensor_names
from qflare.ml.solvers import SolverConfig, SolverState, personal_mask, scaffold_control, solve
from qflare.ml.train import train_local

NAMES = tuple(tensor_names("2nn"))


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


def _cfg(**kw: object) -> SolverConfig:
    base: dict[str, object] = {"epochs": 1, "batch_size": 0, "lr": 0.1, "seed": 0}
    return SolverConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_scaffold_control_update_by_hand() -> None:
    # c_i+ = c_i - c + (x - y) / (K lr) = 0.5 - 1 + (2 - 1) / (2 * 0.25) = 1.5; dc = c_i+ - c_i = 1.0
    c, c_i = [np.array([1.0], np.float32)], [np.array([0.5], np.float32)]
    x, y = [np.array([2.0], np.float32)], [np.array([1.0], np.float32)]
    new, delta = scaffold_control(c, c_i, x, y, steps=2, lr=0.25)
    assert new[0].tolist() == [1.5] and delta[0].tolist() == [1.0]
    assert new[0].dtype == np.float32 and delta[0].dtype == np.float32
    with pytest.raises(ConfigError) as info:
        scaffold_control(c, c_i, x, y, steps=0, lr=0.25)
    assert info.value.field == "local_steps"


def test_local_steps_are_counted() -> None:
    x, y = _data(64)
    w = init_weights("2nn", 0)
    assert train_local("2nn", w, x, y, epochs=2, batch_size=10, lr=0.1, seed=0).local_steps == 14
    assert train_local("2nn", w, x, y, epochs=3, batch_size=0, lr=0.1, seed=0).local_steps == 3


def test_correction_shifts_one_full_batch_step_by_minus_lr_times_it() -> None:
    x, y = _data(32)
    w = init_weights("2nn", 1)
    shift = [np.full_like(a, 0.5) for a in w]
    plain = train_local("2nn", w, x, y, 1, 0, 0.1, 0).weights
    moved = train_local("2nn", w, x, y, 1, 0, 0.1, 0, correction=shift).weights
    for p, q in zip(plain, moved, strict=True):
        np.testing.assert_allclose(q - p, -0.05, atol=1e-6)
    with pytest.raises(ConfigError) as info:
        train_local("2nn", w, x, y, 1, 0, 0.1, 0, correction=shift[:2])
    assert info.value.field == "correction"


def test_scaffold_control_is_the_gradient_after_one_full_batch_step() -> None:
    # From c = c_i = 0, one full-batch step gives c_i+ = (x - y)/lr = grad f_i(x). A device whose
    # c_i is its own gradient (and c = 0) is corrected by -grad: it does not move at all.
    x, y = _data(32)
    w = init_weights("2nn", 2)
    first = solve("2nn", NAMES, w, {}, x, y, _cfg(scaffold=True), SolverState(), round=1)
    assert first.metrics["local_steps"] == 1 and first.state.round == 1
    assert first.state.control is not None
    for dc, ci in zip(first.groups[CONTROL], first.state.control, strict=True):
        np.testing.assert_array_equal(dc, ci)  # c_i was 0
    again = solve("2nn", NAMES, w, {CONTROL: [np.zeros_like(a) for a in w]}, x, y,
                  _cfg(scaffold=True), first.state, round=2)  # fmt: skip
    for got, start in zip(again.groups[WEIGHTS], w, strict=True):
        np.testing.assert_allclose(got, start, atol=1e-6)
    # Then (x - y) = 0, so c_i+ = c_i - c + 0 = c_i and dc = 0.
    for dc in again.groups[CONTROL]:
        np.testing.assert_allclose(dc, 0.0, atol=1e-3)


def test_plain_solve_reports_steps_and_sends_weights_only() -> None:
    x, y = _data(20)
    w = init_weights("2nn", 3)
    out = solve("2nn", NAMES, w, {}, x, y, _cfg(batch_size=8, epochs=2), SolverState(), round=4)
    assert set(out.groups) == {WEIGHTS} and out.names == NAMES
    assert out.metrics["local_steps"] == 6 and out.metrics["proximal_mu"] == 0.0
    assert out.state == SolverState(round=4) and out.personal_model is None


def test_ditto_trains_a_personal_model_towards_the_global_one() -> None:
    x, y = _data(40)
    w = init_weights("2nn", 4)
    empty = SolverState()
    loose = solve("2nn", NAMES, w, {}, x, y, _cfg(epochs=3, batch_size=4, ditto_lambda=1e-3), empty, 1)
    tight = solve("2nn", NAMES, w, {}, x, y, _cfg(epochs=3, batch_size=4, ditto_lambda=5.0), empty, 1)
    assert loose.personal_model is not None and tight.personal_model is not None
    assert tight.state.ditto is not None

    def dist(a: list[np.ndarray]) -> float:
        return float(sum(np.sum((p - q) ** 2) for p, q in zip(a, w, strict=True)))

    assert dist(tight.personal_model) < 0.5 * dist(loose.personal_model)
    # The global copy trains as without Ditto: the personal model is extra.
    plain = solve("2nn", NAMES, w, {}, x, y, _cfg(epochs=3, batch_size=4), SolverState(), 1)
    for p, q in zip(plain.groups[WEIGHTS], loose.groups[WEIGHTS], strict=True):
        np.testing.assert_array_equal(p, q)
    # The next round starts v from the stored value, not from the global model.
    stored = [np.full_like(a, 0.01) for a in w]
    nxt = solve("2nn", NAMES, w, {}, x, y, _cfg(ditto_lambda=0.001, lr=1e-6), SolverState(1, ditto=stored), 2)
    assert nxt.personal_model is not None
    np.testing.assert_allclose(nxt.personal_model[0], stored[0], atol=1e-4)


def test_fedper_keeps_personal_tensors_on_the_device() -> None:
    x, y = _data(30)
    w = init_weights("2nn", 5)
    assert personal_mask(NAMES, r"fc3\..*") == [False, False, False, False, True, True]
    assert personal_mask(NAMES, "") == [False] * 6
    with pytest.raises(ConfigError):
        personal_mask(NAMES, "(")
    own = {"fc3.weight": np.zeros_like(w[4]), "fc3.bias": np.zeros_like(w[5])}
    out = solve("2nn", NAMES, w, {}, x, y, _cfg(personal=r"fc3\..*"), SolverState(3, personal=own), 4)
    assert out.names == NAMES[:4] and len(out.groups[WEIGHTS]) == 4
    # Trained from the device's own head (zeros), not the global one, and kept.
    assert set(out.state.personal) == {"fc3.weight", "fc3.bias"}
    assert float(np.abs(out.state.personal["fc3.weight"]).max()) < float(np.abs(w[4]).max())
    assert out.personal_model is not None and len(out.personal_model) == 6
    np.testing.assert_array_equal(out.personal_model[4], out.state.personal["fc3.weight"])
