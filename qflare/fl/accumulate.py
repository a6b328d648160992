"""Streaming weighted sum whose result does not depend on the order updates arrive in.

Float addition is not associative, so a float running sum fed the same updates in
a different order (as happens when the aggregator is killed and replays Kafka
from its checkpoint) can give a different global model. Here every value is
turned into an integer first, and integer addition is associative and exact:

    q = rint(x * 2**F)            exact in float64 for float16/32/64 input
    S += q * n                    signed 128-bit, n = the update's num_examples
    mean = S / W * 2**-F -> f32   W = sum of n

so the stored sum, its serialised bytes and the final mean are bit-identical for
any arrival order and any checkpoint/restore in between. ``S`` is a signed
128-bit integer per parameter, held as two 64-bit limbs with explicit carries
(``qflare.fl.int128``); ``q * n`` is formed from pieces that each fit 64 bits
(``q = a * 2**40 + b``, ``n`` in 24-bit pieces), so nothing is ever rounded.

Range. An update is rejected (``InvalidUpdateError`` naming the tensor) unless
every value is finite with ``|x| <= 2**R``. Then ``|q| <= 2**(F+R)`` and
``|S| <= 2**(F+R) * W``, which fits 127 bits while ``W <= capacity =
min((2**127 - 1) >> (F+R), 2**48 - 1)``; an update that would take ``W`` past the
capacity is rejected too (field ``num_examples``). ``2**48`` is where ``n`` stops
fitting two 24-bit pieces. ``F + R <= 78`` keeps ``a * piece`` inside int64.
Defaults F=56, R=20: values up to 2**20 = 1,048,576 in magnitude, steps of
2**-56 (1.4e-17), and up to 2**48 - 1 (2.8e14) examples per round.

Precision. With ``m`` the exact (real-number) weighted mean, the result ``r``
satisfies ``|r - m| <= 2**-(F+1) + 2**-24 * |m|`` (plus float64 rounding of
relative size about 2**-51): rounding to the grid moves each value at most half a
step and a weighted mean of such errors is no larger; the final float32 cast adds
half an ulp. So the relative error is ``<= 2**-24 + 2**-(F+1) / |m|``: with the
defaults 6.0e-8 + 7e-10 at |m| = 1e-8, within 1e-6 down to |m| of about 7e-12.
The grid is fixed by (F, R), not chosen from the data, so no round-start scale has
to be agreed, stored or trusted.

Secure aggregation. The sum is plain integer addition modulo 2**128 on values
whose true total never wraps (the capacity above). A device can quantise with
the public (F, R), multiply by its ``n`` and add a mask modulo 2**128; masks that
cancel across devices leave exactly ``S``, bit for bit what this class computes
from the clear values, because int128 limb addition is addition modulo 2**128.

Checkpoint bytes: msgpack with ``v`` = 2 and each tensor's sum as its low limbs
(uint64) and its high limbs (int64) in the narrowest of 1, 2, 4 or 8 bytes that
holds them all (``int128.to_bytes``): about 9 bytes a parameter for a model's
weights, and still a function of the values alone. Version-1 states (int64 sums,
F=28, R=8 by default) still load: their values are sign-extended and the round
continues on its own (F, R), so a round in flight across an upgrade closes with
the same result it would have had; any other version is refused (field ``v``).

Memory is two 64-bit limbs per parameter (16 bytes), whatever the number of
updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import msgpack
import numpy as np
from numpy.typing import NDArray

from qflare.errors import AggregationError, InvalidUpdateError
from qflare.fl import int128
from qflare.fl.arrays import NDArrays, Shape, check_like, shapes_of

_STATE_VERSION = 2
#: Versions ``from_bytes`` reads; 1 held int64 sums.
_READABLE = (1, 2)
_INT128_MAX = (1 << 127) - 1
#: ``n`` is multiplied in two 24-bit pieces.
_MAX_EXAMPLES = (1 << (2 * int128.PIECE_BITS)) - 1
#: Elements per block: the ~8 float64/int64 temporaries of one block stay in L2.
_BLOCK = 1 << 15


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """The fixed-point format: ``frac_bits`` (F) below the binary point, values up to ``2**range_bits``."""

    frac_bits: int = 56
    range_bits: int = 20

    def __post_init__(self) -> None:
        if not (self.frac_bits >= 0 and self.range_bits >= -16 and self.frac_bits + self.range_bits <= 78):
            raise AggregationError(
                f"unsupported fixed-point format F={self.frac_bits}, R={self.range_bits} (need F+R <= 78)",
                field="frac_bits",
            )

    @property
    def max_abs(self) -> float:
        return float(2.0**self.range_bits)

    @property
    def capacity(self) -> int:
        """The largest total weight (sum of ``num_examples``) one sum can hold without overflow."""
        return min(_INT128_MAX >> (self.frac_bits + self.range_bits), _MAX_EXAMPLES)

    def error_bound(self, exact: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per-element bound on ``|mean - exact|`` (see the module docstring)."""
        return np.float64(2.0 ** -(self.frac_bits + 1)) + np.abs(exact) * 2.0**-24


class FixedPointAccumulator:
    """Exact, order-independent running sum of ``num_examples``-weighted updates."""

    def __init__(
        self,
        names: Sequence[str],
        shapes: Sequence[Shape],
        fmt: FixedPoint | None = None,
    ) -> None:
        if len(names) != len(shapes) or len(set(names)) != len(names):
            raise AggregationError("tensor names must be unique and match the shapes", field="names")
        self.fmt = fmt or FixedPoint()
        self.names = list(names)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        #: Per tensor, flat (hi, lo) limbs of the int128 sums.
        self.sums = [int128.zeros(int(np.prod(s, dtype=np.int64))) for s in self.shapes]
        self.total_weight = 0
        self.count = 0

    @classmethod
    def like(
        cls,
        weights: Sequence[NDArray[Any]],
        names: Sequence[str] | None = None,
        fmt: FixedPoint | None = None,
    ) -> Self:
        """An empty sum shaped like ``weights``; names default to ``t0, t1, ...``."""
        return cls(names or [f"t{i}" for i in range(len(weights))], shapes_of(weights), fmt)

    def add(self, weights: Sequence[NDArray[Any]], num_examples: int) -> None:
        """Add one update. Validates everything first, so a rejected update leaves the sum untouched."""
        if (
            isinstance(num_examples, bool)
            or not isinstance(num_examples, int | np.integer)
            or num_examples < 1
        ):
            raise InvalidUpdateError(
                f"must be a positive integer, got {num_examples!r}", field="num_examples"
            )
        n = int(num_examples)
        if self.total_weight + n > self.fmt.capacity:
            raise InvalidUpdateError(
                f"round total {self.total_weight} + {n} exceeds the fixed-point capacity {self.fmt.capacity}",
                field="num_examples",
            )
        check_like(weights, self.shapes, self.names)
        limit = self.fmt.max_abs
        for array, name in zip(weights, self.names, strict=True):
            # Two reductions and no temporary; `not <=` is also true for NaN, so non-finite fails too.
            if array.size and not (float(np.max(array)) <= limit and float(np.min(array)) >= -limit):
                raise InvalidUpdateError(
                    f"holds a value that is non-finite or above {limit:g} in magnitude", field=name
                )
        mask = (1 << int128.PIECE_BITS) - 1
        pieces = [(m, shift) for m, shift in ((n & mask, 0), (n >> int128.PIECE_BITS, 24)) if m]
        for array, (hi, lo) in zip(weights, self.sums, strict=True):
            flat = array.reshape(-1)
            for start in range(0, flat.size, _BLOCK):
                block = slice(start, start + _BLOCK)
                a, b = int128.quantize(flat[block], self.fmt.frac_bits)
                for m, shift in pieces:
                    int128.add_product(hi[block], lo[block], a, b, m, shift)
        self.total_weight += n
        self.count += 1

    def mean(self) -> NDArrays:
        """The weighted mean as float32 arrays (deterministic in the stored integers)."""
        if self.count == 0:
            raise AggregationError("no updates were accumulated", field="count")
        unscale = 2.0**-self.fmt.frac_bits
        w = float(self.total_weight)
        return [
            ((int128.to_float64(hi, lo) / w) * unscale).astype(np.float32).reshape(shape)
            for (hi, lo), shape in zip(self.sums, self.shapes, strict=True)
        ]

    # --- checkpointing --------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialise (msgpack; sums as ``int128.to_bytes`` lays them out) for the aggregator's checkpoint."""
        doc = {
            "v": _STATE_VERSION,
            "frac_bits": self.fmt.frac_bits,
            "range_bits": self.fmt.range_bits,
            "names": self.names,
            "shapes": [list(s) for s in self.shapes],
            "sums": [int128.to_bytes(hi, lo) for hi, lo in self.sums],
            "total_weight": self.total_weight,
            "count": self.count,
        }
        return bytes(msgpack.packb(doc, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Load a version-2 state, or a version-1 one (int64 sums) on its own format."""
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise AggregationError(f"accumulator state does not decode: {exc}") from exc
        if not isinstance(doc, dict):
            raise AggregationError("accumulator state is not a map", field="v")
        version = doc.get("v")
        if type(version) is not int or version not in _READABLE:
            raise AggregationError(
                f"accumulator state version {version!r} is not one this build reads {_READABLE}", field="v"
            )
        names, shapes, sums = doc.get("names"), doc.get("shapes"), doc.get("sums")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise AggregationError("must be a list of strings", field="names")
        if not (
            isinstance(shapes, list)
            and len(shapes) == len(names)
            and all(isinstance(s, list) and all(type(d) is int and d >= 0 for d in s) for s in shapes)
        ):
            raise AggregationError("must be one list of dimensions per name", field="shapes")
        for key in ("frac_bits", "range_bits", "total_weight", "count"):
            if type(doc.get(key)) is not int or doc[key] < (-16 if key == "range_bits" else 0):
                raise AggregationError("must be a non-negative integer", field=key)
        out = cls(names, [tuple(s) for s in shapes], FixedPoint(doc["frac_bits"], doc["range_bits"]))
        if not (isinstance(sums, list) and len(sums) == len(names)):
            raise AggregationError("must hold one byte string per tensor", field="sums")
        for i, (raw, shape) in enumerate(zip(sums, out.shapes, strict=True)):
            size = int(np.prod(shape, dtype=np.int64))
            wrong = AggregationError(f"tensor {names[i]!r} has the wrong byte length", field="sums")
            if not isinstance(raw, bytes):
                raise wrong
            if version == 1:
                if len(raw) != 8 * size:
                    raise wrong
                out.sums[i] = int128.from_int64(np.frombuffer(raw, dtype="<i8").astype(np.int64))
                continue
            try:
                out.sums[i] = int128.from_bytes(raw, size)
            except ValueError as exc:
                raise wrong from exc
        out.total_weight, out.count = doc["total_weight"], doc["count"]
        if out.total_weight > out.fmt.capacity or (out.count == 0) != (out.total_weight == 0):
            raise AggregationError("total weight and count are inconsistent", field="total_weight")
        return out


def weighted_average(
    results: Sequence[tuple[Sequence[NDArray[Any]], int]], fmt: FixedPoint | None = None
) -> NDArrays:
    """FedAvg's maths on ``[(weights, num_examples), ...]``: exact, and independent of list order."""
    if not results:
        raise AggregationError("nothing to average", field="results")
    acc = FixedPointAccumulator.like(results[0][0], fmt=fmt)
    for weights, n in results:
        acc.add(weights, n)
    return acc.mean()
