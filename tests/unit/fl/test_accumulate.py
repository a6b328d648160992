"""Exact fixed-point accumulation: order-free bit-identical sums, the documented error bound, rejection."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import numpy as np
import pytest
from numpy.typing import NDArray

from qflare.errors import AggregationError, InvalidUpdateError
from qflare.fl import FixedPoint, FixedPointAccumulator, flatten, unflatten, weighted_average
from qflare.fl.arrays import NDArrays

SHAPES = [(40, 30), (30,), (6, 3, 5, 5)]
NAMES = ["fc.weight", "fc.bias", "conv.weight"]


def _updates(count: int, seed: int, scale: float = 0.1) -> list[tuple[NDArrays, int]]:
    rng = np.random.default_rng(seed)
    return [
        ([(rng.standard_normal(s) * scale).astype(np.float32) for s in SHAPES], int(rng.integers(1, 2000)))
        for _ in range(count)
    ]


def _acc(fmt: FixedPoint | None = None) -> FixedPointAccumulator:
    return FixedPointAccumulator(NAMES, SHAPES, fmt)


def _exact_mean(updates: list[tuple[NDArrays, int]]) -> list[NDArray[np.float64]]:
    total = sum(n for _, n in updates)
    return [
        sum((w[i].astype(np.float64) * n for w, n in updates), np.zeros(SHAPES[i])) / total
        for i in range(len(SHAPES))
    ]


def test_any_arrival_order_gives_bit_identical_state_and_mean() -> None:
    updates = _updates(12, seed=1)
    reference = _acc()
    for w, n in updates:
        reference.add(w, n)
    rng = np.random.default_rng(2)
    for _ in range(5):
        acc = _acc()
        for i in rng.permutation(len(updates)):
            acc.add(*updates[i])
        assert acc.to_bytes() == reference.to_bytes()
        assert all(a.tobytes() == b.tobytes() for a, b in zip(acc.mean(), reference.mean(), strict=True))


def test_float_summation_would_not_be_order_free() -> None:
    # Guards the premise: a plain float32 running sum does depend on order for these inputs.
    updates = _updates(12, seed=1)
    sums = set()
    for order in itertools.islice(itertools.permutations(range(12)), 0, 2000, 97):
        s = np.zeros(SHAPES[0], dtype=np.float32)
        for i in order:
            s += updates[i][0][0] * np.float32(updates[i][1])
        sums.add(s.tobytes())
    assert len(sums) > 1


def test_checkpoint_and_resume_matches_an_uninterrupted_run() -> None:
    updates = _updates(10, seed=3)
    uninterrupted = _acc()
    for w, n in updates:
        uninterrupted.add(w, n)
    first = _acc()
    for w, n in updates[:4]:
        first.add(w, n)
    resumed = FixedPointAccumulator.from_bytes(first.to_bytes())  # "kill -9" here
    for w, n in reversed(updates[4:]):
        resumed.add(w, n)
    assert resumed.to_bytes() == uninterrupted.to_bytes()
    assert (resumed.count, resumed.total_weight) == (10, sum(n for _, n in updates))


@pytest.mark.parametrize("frac_bits", [16, 28])
@pytest.mark.parametrize("scale", [1e-3, 0.1, 30.0])
def test_error_bound_against_float64_weighted_mean(frac_bits: int, scale: float) -> None:
    updates = _updates(25, seed=4, scale=scale)
    fmt = FixedPoint(frac_bits=frac_bits, range_bits=8)
    acc = _acc(fmt)
    for w, n in updates:
        acc.add(w, n)
    for got, exact in zip(acc.mean(), _exact_mean(updates), strict=True):
        assert got.dtype == np.float32
        err = np.abs(got.astype(np.float64) - exact)
        # Slack of 1e-9 relative covers the float64 steps the bound leaves out.
        assert np.all(err <= fmt.error_bound(exact) * (1 + 1e-9))
    if frac_bits == 16 and scale == 1e-3:
        # The absolute term is real: with few fraction bits small values do lose precision.
        err = np.abs(acc.mean()[0] - _exact_mean(updates)[0])
        assert err.max() > 2.0**-24 * np.abs(_exact_mean(updates)[0]).max()


def test_weighted_average_matches_and_is_list_order_free() -> None:
    updates = _updates(6, seed=5)
    a = weighted_average(updates)
    b = weighted_average(list(reversed(updates)))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    for got, exact in zip(a, _exact_mean(updates), strict=True):
        np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-8)


def test_single_update_round_trips_exactly_on_the_grid() -> None:
    w = [np.full(s, 0.25, dtype=np.float32) for s in SHAPES]
    acc = _acc()
    acc.add(w, 7)
    assert all(np.array_equal(m, x) for m, x in zip(acc.mean(), w, strict=True))


def _bad(bias: NDArray[Any]) -> NDArrays:
    """Zeros everywhere except the bias tensor (``fc.bias``), which is ``bias``."""
    weights = [np.zeros(s, dtype=np.float32) for s in SHAPES]
    weights[1] = bias.astype(np.float32)
    return weights


@pytest.mark.parametrize(
    ("weights", "n", "field"),
    [
        ([np.zeros(s, np.float32) for s in SHAPES[:2]], 5, "tensors"),
        ([np.zeros((40, 31), np.float32), *[np.zeros(s, np.float32) for s in SHAPES[1:]]], 5, "fc.weight"),
        ([np.zeros(s, np.int32) for s in SHAPES], 5, "fc.weight"),
        (_bad(np.full(30, np.nan)), 5, "fc.bias"),
        (_bad(np.full(30, np.inf)), 5, "fc.bias"),
        (_bad(np.full(30, 2.0**20 + 0.125)), 5, "fc.bias"),
        ([np.zeros(s, np.float32) for s in SHAPES], 0, "num_examples"),
        ([np.zeros(s, np.float32) for s in SHAPES], True, "num_examples"),
        ([np.zeros(s, np.float32) for s in SHAPES], 2.0, "num_examples"),
    ],
)
def test_invalid_updates_are_rejected_and_leave_the_sum_untouched(
    weights: NDArrays, n: Any, field: str
) -> None:
    acc = _acc()
    acc.add(*_updates(1, seed=6)[0])
    before = acc.to_bytes()
    with pytest.raises(InvalidUpdateError) as info:
        acc.add(weights, n)
    assert info.value.field == field
    assert acc.to_bytes() == before


def test_values_at_the_range_limit_are_accepted() -> None:
    acc = _acc()
    acc.add(_bad(np.full(30, -(2.0**20))), 3)
    assert acc.mean()[1][0] == -(2.0**20)


def test_capacity_is_enforced_before_overflow() -> None:
    fmt = FixedPoint()  # capacity 2**48 - 1 examples, where n stops fitting two 24-bit pieces
    acc = _acc(fmt)
    assert fmt.capacity == 2**48 - 1
    top = _bad(np.full(30, 2.0**20))
    acc.add(top, 2**48 - 1)  # |S| = 2**(56 + 20 + 48) = 2**124, still exact
    with pytest.raises(InvalidUpdateError) as info:
        acc.add(top, 1)
    assert info.value.field == "num_examples"
    assert acc.mean()[1][0] == 2.0**20


def test_mean_of_nothing_and_bad_formats_raise() -> None:
    with pytest.raises(AggregationError):
        _acc().mean()
    with pytest.raises(AggregationError):
        FixedPoint(frac_bits=60, range_bits=20)
    with pytest.raises(AggregationError):
        FixedPointAccumulator(["a", "a"], [(1,), (2,)])
    with pytest.raises(AggregationError):
        weighted_average([])


def _doc(acc: FixedPointAccumulator) -> dict[str, Any]:
    doc: dict[str, Any] = msgpack.unpackb(acc.to_bytes(), raw=False)
    return doc


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(v=3), "v"),
        (lambda d: d.update(v="2"), "v"),
        (lambda d: d.update(names=[1, 2, 3]), "names"),
        (lambda d: d.update(shapes=[[40, 30]]), "shapes"),
        (lambda d: d.update(sums=d["sums"][:2]), "sums"),
        (lambda d: d["sums"].__setitem__(0, b"\0" * 16), "sums"),
        (lambda d: d.update(count=-1), "count"),
        (lambda d: d.update(count=0), "total_weight"),
    ],
)
def test_corrupt_state_is_rejected_with_the_field(mutate: Any, field: str) -> None:
    acc = _acc()
    acc.add(*_updates(1, seed=7)[0])
    doc = _doc(acc)
    mutate(doc)
    with pytest.raises(AggregationError) as info:
        FixedPointAccumulator.from_bytes(msgpack.packb(doc, use_bin_type=True))
    assert info.value.field == field


def test_garbage_state_bytes_raise_aggregation_error() -> None:
    with pytest.raises(AggregationError):
        FixedPointAccumulator.from_bytes(b"\xc1not msgpack")
    with pytest.raises(AggregationError):
        FixedPointAccumulator.from_bytes(msgpack.packb([1, 2]))


def test_flatten_unflatten_round_trip() -> None:
    arrays = _updates(1, seed=8)[0][0]
    flat = flatten(arrays)
    assert flat.shape == (sum(a.size for a in arrays),)
    back = unflatten(flat, SHAPES)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))
    with pytest.raises(InvalidUpdateError):
        unflatten(flat[:-1], SHAPES)
