"""Vectorised signed 128-bit integers: two numpy limbs per element, explicit carries.

An array of int128 ``S`` is held as ``hi`` (int64) and ``lo`` (uint64) with
``S = hi * 2**64 + lo``: plain two's complement split in half, so every integer
has exactly one representation and the same value always serialises to the same
bytes. Limb arithmetic wraps modulo 2**64 (numpy integer arrays do), so the pair
wraps modulo 2**128 as one int128 would; callers bound their values so that the
true sums never wrap.

Only what the fixed-point sum needs is here: turn scaled floats into integers
``q = a * 2**40 + b``, add ``q * m * 2**shift`` for a small multiplier ``m``,
convert to float64, serialise. Every function works on one block of elements;
the caller walks a tensor block by block so that the temporaries stay in cache
(Python loops per block, never per element).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

#: ``q`` is split as ``a * 2**SPLIT_BITS + b`` with ``0 <= b < 2**SPLIT_BITS``.
SPLIT_BITS = 40
#: Multipliers are below ``2**PIECE_BITS``, so ``b * m < 2**64`` fits a uint64.
PIECE_BITS = 24

I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]


def zeros(size: int) -> tuple[I64, U64]:
    return np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.uint64)


def quantize(x: NDArray[Any], frac_bits: int) -> tuple[I64, U64]:
    """``q = rint(x * 2**frac_bits)`` as ``(a, b)``, exactly, for any |q| < 2**(53 + SPLIT_BITS).

    The product is exact in float64 for float16/32/64 input (a power-of-two
    scale), ``rint`` and ``floor`` of it are exact, and ``q - a * 2**40`` is an
    integer below 2**40, so representable and hence computed exactly.
    """
    q = np.multiply(x, 2.0**frac_bits, dtype=np.float64)
    np.rint(q, out=q)
    a = np.multiply(q, 2.0**-SPLIT_BITS)
    np.floor(a, out=a)
    q -= a * 2.0**SPLIT_BITS
    return a.astype(np.int64), q.astype(np.uint64)


def _add_low(hi: I64, lo: U64, low: U64) -> None:
    """``S += low`` for non-negative ``low < 2**64``: add to ``lo``, carry into ``hi``."""
    lo += low
    # Unsigned wrap-around happened exactly when the new ``lo`` is below what was added.
    hi += lo < low


def add_product(hi: I64, lo: U64, a: I64, b: U64, m: int, shift: int) -> None:
    """``S += (a * 2**40 + b) * m * 2**shift`` in place, for ``0 <= m < 2**24``, shift 0 or 24.

    ``b * m < 2**64`` fits a uint64; ``a * m`` fits an int64 when ``|a| < 2**39``.
    """
    p = b * np.uint64(m)  # < 2**64
    r = a * np.int64(m)  # signed, the part at 2**40
    if shift == 0:
        _add_low(hi, lo, p)
        # r * 2**40: its low 24 bits land in the top of ``lo``, the rest (floored) in ``hi``.
        _add_low(hi, lo, r.view(np.uint64) << np.uint64(SPLIT_BITS))
        hi += r >> np.int64(64 - SPLIT_BITS)
    elif shift == PIECE_BITS:
        _add_low(hi, lo, p << np.uint64(PIECE_BITS))
        hi += (p >> np.uint64(64 - PIECE_BITS)).view(np.int64)
        # r * 2**(40 + 24) = r * 2**64 lands entirely in ``hi``.
        hi += r
    else:
        raise ValueError(f"shift must be 0 or {PIECE_BITS}, not {shift}")


def to_float64(hi: I64, lo: U64) -> NDArray[np.float64]:
    """The values as float64, within 2**-52 relative (sign and magnitude, so no cancellation)."""
    neg = hi < 0
    # Two's complement negation of the pair: invert both, add one to ``lo``, carry on wrap to 0.
    nlo = ~lo + np.uint64(1)
    nhi = ~hi + (nlo == 0)
    mag_hi = np.where(neg, nhi, hi)
    mag_lo = np.where(neg, nlo, lo)
    out = mag_hi.astype(np.float64) * 2.0**64 + mag_lo.astype(np.float64)
    return np.where(neg, -out, out)


def from_int64(s: I64) -> tuple[I64, U64]:
    """Sign-extend int64 values to the pair."""
    return (s >> np.int64(63)).astype(np.int64), s.view(np.uint64).copy()


#: Widths ``hi`` may be stored in; the first byte of a serialised block says which.
_HI_WIDTHS = (1, 2, 4, 8)


def to_bytes(hi: I64, lo: U64) -> bytes:
    """One byte ``w``, then ``lo`` as little-endian uint64, then ``hi`` as little-endian ``w``-byte ints.

    ``w`` is the narrowest of 1, 2, 4, 8 bytes that holds every ``hi``: a function
    of the values alone, so equal sums still give equal bytes. A model's weights
    summed with F=56 have ``|hi|`` of a few units, so a checkpoint is about 9 bytes
    a parameter rather than 16. The pair is the int128 ``hi * 2**64 + lo``.
    """
    low, high = (int(hi.min()), int(hi.max())) if hi.size else (0, 0)
    width = next(w for w in _HI_WIDTHS if -(1 << (8 * w - 1)) <= low and high < 1 << (8 * w - 1))
    return (
        bytes([width])
        + lo.reshape(-1).astype("<u8", copy=False).tobytes()
        + hi.reshape(-1).astype(f"<i{width}").tobytes()
    )


def from_bytes(raw: bytes, size: int) -> tuple[I64, U64]:
    """Inverse of ``to_bytes``; ``ValueError`` when ``raw`` is not such a block of ``size`` elements."""
    width = raw[0] if raw else 0
    if width not in _HI_WIDTHS or len(raw) != 1 + (8 + width) * size:
        raise ValueError(f"expected {size} elements with a 1, 2, 4 or 8-byte high half")
    lo = np.frombuffer(raw, dtype="<u8", count=size, offset=1).astype(np.uint64)
    hi = np.frombuffer(raw, dtype=f"<i{width}", count=size, offset=1 + 8 * size).astype(np.int64)
    return hi, lo
