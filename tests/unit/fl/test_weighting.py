"""The server's weighting rule: declared sizes, the cap from the selected devices' median, equal weights."""

from __future__ import annotations

import pytest

from qflare.errors import Rejected
from qflare.fl.weighting import RoundWeights, round_weights
from qflare.reasons import Reason


def test_the_cap_is_k_times_the_median_of_the_selected_devices_declared_sizes() -> None:
    declared = {"a": 100, "b": 200, "c": 300, "d": 10_000, "other": 1}
    rw = round_weights("declared", 3.0, ["a", "b", "c", "d"], declared)
    # median of 100, 200, 300, 10,000 is 250 (devices not selected do not count)
    assert rw == RoundWeights("declared", 750)
    assert rw.weight("a", 100, 100) == 100
    assert rw.weight("d", 10_000, 10_000) == 750
    assert rw.weight("d", 600, 10_000) == 600


def test_the_cap_is_floored_and_at_least_one() -> None:
    assert round_weights("declared", 1.5, ["a", "b"], {"a": 1, "b": 2}).cap == 2  # floor(1.5 × 1.5)
    assert round_weights("declared", 1.0, ["a"], {"a": 1}).cap == 1


def test_selected_devices_that_declared_nothing_do_not_move_the_median() -> None:
    rw = round_weights("declared", 2.0, ["a", "b", "c"], {"a": 10, "b": None})
    assert rw.cap == 20


def test_no_declaration_among_the_selected_means_no_cap() -> None:
    assert round_weights("declared", 3.0, ["a"], {}).cap is None


def test_a_claim_above_the_declared_size_is_refused_under_either_policy() -> None:
    for policy in ("declared", "equal"):
        rw = round_weights(policy, 3.0, ["a"], {"a": 100})
        with pytest.raises(Rejected) as err:
            rw.weight("a", 101, 100)
        assert err.value.reason == Reason.OVER_CLAIM
        assert err.value.field == "body.num_examples"


def test_an_undeclared_device_is_refused_under_declared_and_weighs_one_under_equal() -> None:
    rw = round_weights("declared", 3.0, ["a", "b"], {"a": 100, "b": None})
    with pytest.raises(Rejected) as err:
        rw.weight("b", 5, None)
    assert err.value.reason == Reason.UNDECLARED
    assert round_weights("equal", 3.0, ["a", "b"], {"a": 100}).weight("b", 5, None) == 1


def test_equal_weights_every_honest_update_one() -> None:
    rw = round_weights("equal", 3.0, ["a", "b"], {"a": 100, "b": 1_000_000})
    assert rw == RoundWeights("equal", None)
    assert rw.weight("a", 100, 100) == 1
    assert rw.weight("b", 1_000_000, 1_000_000) == 1
