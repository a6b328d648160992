"""The widened exact sum: order- and checkpoint-free bytes, the edges of its range, old states."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from qflare.errors import AggregationError, InvalidUpdateError
from qflare.fl import WEIGHTS, FedAvg, FixedPoint, FixedPointAccumulator, RoundSums, Update
from qflare.fl.arrays import NDArrays

SHAPES = [(3, 4), (5,)]
NAMES = ["layer.weight", "layer.bias"]
FMT = FixedPoint()
TOP = 2.0**20

#: Any float32 the format accepts: from subnormals to 2**20, either sign.
VALUES = st.floats(-TOP, TOP, width=32, allow_subnormal=True)
UPDATE = st.tuples(
    st.tuples(*(hnp.arrays(np.float32, s, elements=VALUES) for s in SHAPES)),
    st.integers(1, 2**40),
)


def _acc() -> FixedPointAccumulator:
    return FixedPointAccumulator(NAMES, SHAPES)


def _fed(updates: list[tuple[tuple[NDArray[Any], ...], int]]) -> FixedPointAccumulator:
    acc = _acc()
    for w, n in updates:
        acc.add(list(w), n)
    return acc


@settings(max_examples=60, deadline=None)
@given(updates=st.lists(UPDATE, min_size=1, max_size=6), data=st.data())
def test_any_order_and_any_checkpoint_split_give_identical_bytes(
    updates: list[tuple[tuple[NDArray[Any], ...], int]], data: st.DataObject
) -> None:
    reference = _fed(updates)
    order = data.draw(st.permutations(range(len(updates))))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(updates)), max_size=3)))
    acc = _acc()
    for i, index in enumerate(order):
        if i in cuts:  # the aggregator is killed here and resumes from its stored bytes
            acc = FixedPointAccumulator.from_bytes(acc.to_bytes())
        acc.add(list(updates[index][0]), updates[index][1])
    acc = FixedPointAccumulator.from_bytes(acc.to_bytes())
    assert acc.to_bytes() == reference.to_bytes()
    assert [m.tobytes() for m in acc.mean()] == [m.tobytes() for m in reference.mean()]


def _reference(updates: list[tuple[NDArrays, int]]) -> list[NDArray[np.float64]]:
    total = sum(n for _, n in updates)
    return [np.sum([w[i].astype(np.float64) * (n / total) for w, n in updates], axis=0) for i in range(2)]


@pytest.mark.parametrize("magnitude", [1e-8, 1e-6, 1e-3, 1.0, 1e3, 1e6])
@pytest.mark.parametrize("counts", [(1, 600, 7), (2**39, 2**38, 3), (2**40 - 2, 1, 1)])
def test_relative_error_within_1e_6_against_float64(magnitude: float, counts: tuple[int, ...]) -> None:
    rng = np.random.default_rng(int(magnitude * 1e9) % 1000 + counts[0] % 97)
    # One sign per element across updates, so |mean| stays near the magnitude.
    signs = [rng.choice([-1.0, 1.0], s) for s in SHAPES]
    updates: list[tuple[NDArrays, int]] = []
    for n in counts:
        w = [(magnitude * rng.uniform(0.5, 1.0, g.shape) * g).astype(np.float32) for g in signs]
        updates.append((w, n))
    acc = _acc()
    for w, n in updates:
        acc.add(w, n)
    for got, exact in zip(acc.mean(), _reference(updates), strict=True):
        err = np.abs(got.astype(np.float64) - exact)
        assert np.all(err <= np.abs(exact) * 1e-6)
        assert np.all(err <= FMT.error_bound(exact) * (1 + 1e-9))


def _zeros() -> NDArrays:
    return [np.zeros(s, dtype=np.float32) for s in SHAPES]


def test_the_edges_are_accepted() -> None:
    acc = _acc()
    w = _zeros()
    w[0][0, 0], w[0][0, 1], w[1][0] = TOP, -1e6, np.float32(1e-8)
    acc.add(w, 2**40)
    mean = acc.mean()
    assert mean[0][0, 0] == TOP and mean[0][0, 1] == np.float32(-1e6)
    assert abs(float(mean[1][0]) - float(np.float32(1e-8))) <= 1e-6 * 1e-8
    assert FMT.capacity >= 2**40 and acc.total_weight == 2**40


@pytest.mark.parametrize(
    ("tensor", "value", "field"),
    [
        (0, float(np.nextafter(np.float32(TOP), np.float32(np.inf))), "layer.weight"),
        (1, -float(np.nextafter(np.float32(TOP), np.float32(np.inf))), "layer.bias"),
        (1, 1e7, "layer.bias"),
    ],
)
def test_just_beyond_the_range_is_refused_naming_the_tensor(tensor: int, value: float, field: str) -> None:
    acc = _acc()
    acc.add(_zeros(), 3)
    before = acc.to_bytes()
    w = _zeros()
    w[tensor].reshape(-1)[-1] = value
    with pytest.raises(InvalidUpdateError) as info:
        acc.add(w, 1)
    assert info.value.field == field and "1.04858e+06" in str(info.value)
    assert acc.to_bytes() == before


def test_examples_beyond_the_capacity_are_refused() -> None:
    acc = _acc()
    acc.add(_zeros(), FMT.capacity - 1)
    acc.add(_zeros(), 1)
    before = acc.to_bytes()
    with pytest.raises(InvalidUpdateError) as info:
        acc.add(_zeros(), 1)
    assert info.value.field == "num_examples"
    with pytest.raises(InvalidUpdateError) as info:
        _acc().add(_zeros(), FMT.capacity + 1)
    assert info.value.field == "num_examples"
    assert acc.to_bytes() == before


def _old_state(updates: list[tuple[NDArrays, int]], frac_bits: int = 28, range_bits: int = 8) -> bytes:
    """A version-1 state as the int64 format wrote it."""
    sums = [np.zeros(s, dtype=np.int64) for s in SHAPES]
    for w, n in updates:
        for total, x in zip(sums, w, strict=True):
            total += np.rint(np.multiply(x, 2.0**frac_bits, dtype=np.float64)).astype(np.int64) * n
    doc = {
        "v": 1,
        "frac_bits": frac_bits,
        "range_bits": range_bits,
        "names": NAMES,
        "shapes": [list(s) for s in SHAPES],
        "sums": [s.astype("<i8").tobytes() for s in sums],
        "total_weight": sum(n for _, n in updates),
        "count": len(updates),
    }
    return bytes(msgpack.packb(doc, use_bin_type=True))


def test_a_version_1_state_loads_and_finishes_its_round_on_its_own_format() -> None:
    rng = np.random.default_rng(9)
    updates = [([(rng.standard_normal(s) * 3).astype(np.float32) for s in SHAPES], n) for n in (5, 9, 2)]
    resumed = FixedPointAccumulator.from_bytes(_old_state(updates[:2]))
    assert resumed.fmt == FixedPoint(28, 8) and resumed.count == 2
    resumed.add(*updates[2])
    fresh = FixedPointAccumulator(NAMES, SHAPES, FixedPoint(28, 8))
    for w, n in updates:
        fresh.add(w, n)
    assert resumed.to_bytes() == fresh.to_bytes()
    assert FixedPointAccumulator.from_bytes(resumed.to_bytes()).to_bytes() == fresh.to_bytes()
    with pytest.raises(InvalidUpdateError):  # the old range still applies to that round
        resumed.add([np.full(s, 300.0, np.float32) for s in SHAPES], 1)


def test_an_unknown_version_is_refused_clearly() -> None:
    doc = msgpack.unpackb(_acc().to_bytes(), raw=False)
    doc["v"] = 3
    with pytest.raises(AggregationError) as info:
        FixedPointAccumulator.from_bytes(msgpack.packb(doc, use_bin_type=True))
    assert info.value.field == "v" and "version 3" in str(info.value)
    doc = msgpack.unpackb(_old_state([]), raw=False)
    doc["sums"][0] = b"\0" * 16 * 12  # version 1 with version-2 widths
    with pytest.raises(AggregationError) as info:
        FixedPointAccumulator.from_bytes(msgpack.packb(doc, use_bin_type=True))
    assert info.value.field == "sums"


def test_a_strategy_checkpoint_written_before_the_upgrade_resumes_its_round() -> None:
    rng = np.random.default_rng(10)
    updates = [([rng.standard_normal(s).astype(np.float32) for s in SHAPES], n) for n in (4, 6)]
    doc = {"v": 1, "strategy": "fedavg", "round": 3, "accumulator": _old_state(updates[:1]), "arrays": {}}
    sums = RoundSums.from_bytes(msgpack.packb(doc | {"scalars": {}}, use_bin_type=True))
    FedAvg().accumulate(sums, Update("d1", {WEIGHTS: updates[1][0]}, updates[1][1]))
    fresh = FixedPointAccumulator(NAMES, SHAPES, FixedPoint(28, 8))
    for w, n in updates:
        fresh.add(w, n)
    assert sums.round == 3 and sums.sums[WEIGHTS].to_bytes() == fresh.to_bytes()
