"""The two-limb int128 arithmetic against Python's unbounded integers."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.fl import int128

SIZE = 8
#: |q| up to 2**78, the widest the fixed-point format allows (F + R <= 78).
Q = st.integers(-(2**78), 2**78)


def _ints(hi: int128.I64, lo: int128.U64) -> list[int]:
    return [int(h) * 2**64 + int(lo_) for h, lo_ in zip(hi, lo, strict=True)]


def _pair(values: list[int]) -> tuple[int128.I64, int128.U64]:
    hi = np.array([v >> 64 for v in values], dtype=np.int64)
    lo = np.array([v & (2**64 - 1) for v in values], dtype=np.uint64)
    return hi, lo


def _split(values: list[int]) -> tuple[int128.I64, int128.U64]:
    """Exact (a, b) with ``q = a * 2**40 + b`` from Python ints (the reference for ``quantize``)."""
    a = np.array([q >> int128.SPLIT_BITS for q in values], dtype=np.int64)
    b = np.array([q & ((1 << int128.SPLIT_BITS) - 1) for q in values], dtype=np.uint64)
    return a, b


@settings(max_examples=200, deadline=None)
@given(
    start=st.lists(st.integers(-(2**126), 2**126), min_size=SIZE, max_size=SIZE),
    qs=st.lists(Q, min_size=SIZE, max_size=SIZE),
    n=st.integers(0, 2**48 - 1),
)
def test_add_product_is_exact_integer_arithmetic(start: list[int], qs: list[int], n: int) -> None:
    hi, lo = _pair(start)
    assert _ints(hi, lo) == start
    a, b = _split(qs)
    for m, shift in ((n & 0xFFFFFF, 0), (n >> 24, 24)):
        int128.add_product(hi, lo, a, b, m, shift)
    want = [s + q * n for s, q in zip(start, qs, strict=True)]
    assert _ints(hi, lo) == want
    assert int128.from_bytes(int128.to_bytes(hi, lo), SIZE)[0].tolist() == [w >> 64 for w in want]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(-(2**126), 2**126), min_size=1, max_size=SIZE))
def test_to_float64_is_correctly_signed_and_close(values: list[int]) -> None:
    got = int128.to_float64(*_pair(values))
    for g, v in zip(got, values, strict=True):
        # Two roundings of relative 2**-53 each; no cancellation even for -1 (hi = -1, lo = 2**64 - 1).
        assert abs(Fraction(float(g)) - v) <= abs(v) * Fraction(1, 2**51)


def test_small_negative_sums_do_not_cancel() -> None:
    hi, lo = int128.from_int64(np.array([-1, -3, 0, 5], dtype=np.int64))
    assert list(int128.to_float64(hi, lo)) == [-1.0, -3.0, 0.0, 5.0]


@given(st.lists(st.floats(-(2.0**20), 2.0**20, width=32), min_size=1, max_size=SIZE))
def test_quantize_matches_round_half_even(xs: list[float]) -> None:
    x = np.array(xs, dtype=np.float32)
    a, b = int128.quantize(x, 56)
    got = [int(p) * 2**40 + int(r) for p, r in zip(a, b, strict=True)]
    assert got == [round(Fraction(float(v)) * 2**56) for v in x]


@pytest.mark.parametrize(
    ("values", "width"),
    [
        ([0, 2**64 - 1, -(2**64)], 1),
        ([2**71 - 1, -(2**71)], 1),
        ([2**72, 5], 2),
        ([-(2**95) - 1], 8),
        ([], 1),
    ],
)
def test_bytes_use_the_narrowest_high_half_and_round_trip(values: list[int], width: int) -> None:
    hi, lo = _pair(values)
    raw = int128.to_bytes(hi, lo)
    assert raw[0] == width and len(raw) == 1 + (8 + width) * len(values)
    back_hi, back_lo = int128.from_bytes(raw, len(values))
    assert _ints(back_hi, back_lo) == values
    for bad in (raw[:-1], b"\x03" + raw[1:], b""):
        with pytest.raises(ValueError):
            int128.from_bytes(bad, len(values))
