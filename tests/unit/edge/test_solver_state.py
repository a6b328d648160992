"""The device's solver state on disk: atomic, complete, and reloaded by a restarted device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.solver_state import SolverStateError, load_state, save_state, state_path
from qflare.ml.solvers import SolverState

NAMES = ("a", "b")


def _state() -> SolverState:
    return SolverState(
        round=7,
        control=[np.array([1.5, -2.0], np.float32), np.full((2, 2), 0.25, np.float32)],
        ditto=[np.zeros(2, np.float32), np.ones((2, 2), np.float32)],
        personal={"b": np.arange(4, dtype=np.float32).reshape(2, 2)},
    )


def test_round_trip_keeps_every_group_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = state_path(tmp_path, "job-1")
    assert load_state(path) == SolverState()  # nothing yet: an empty state of round 0
    save_state(path, _state(), NAMES)
    back = load_state(path)
    assert back.round == 7
    assert back.control is not None and back.ditto is not None
    for got, want in zip(back.control + back.ditto, _state().control + _state().ditto, strict=True):  # type: ignore[operator]
        assert got.dtype == np.float32 and np.array_equal(got, want)
    assert list(back.personal) == ["b"] and np.array_equal(back.personal["b"], _state().personal["b"])
    assert [p.name for p in path.parent.iterdir()] == ["job-1.npz"]


def test_a_new_state_replaces_the_old_one_whole(tmp_path: Path) -> None:
    path = state_path(tmp_path, "j")
    save_state(path, _state(), NAMES)
    save_state(
        path, SolverState(round=8, control=[np.zeros(2, np.float32), np.zeros((2, 2), np.float32)]), NAMES
    )
    back = load_state(path)
    assert back.round == 8 and back.ditto is None and not back.personal
    assert back.control is not None and not np.any(back.control[0])


def test_a_corrupt_file_is_a_typed_error_naming_it(tmp_path: Path) -> None:
    path = state_path(tmp_path, "j")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip")
    with pytest.raises(SolverStateError) as info:
        load_state(path)
    assert info.value.field == str(path)
