"""Streaming weighted sum whose result does not depend on the order updates arrive in.

Float addition is not associative, so a float running sum fed the same updates in
a different order (as happens when the aggregator is killed and replays Kafka
from its checkpoint) can give a different global model. Here every value is
turned into an integer first, and integer addition is associative and exact:

    q = rint(x * 2**F)            exact in float64 for float32/float16 input
    S += q * n                    int64, n = the update's num_examples
    mean = S / W * 2**-F -> f32   W = sum of n

so the stored sum, its serialised bytes and the final mean are bit-identical for
any arrival order.

Range. An update is rejected (``InvalidUpdateError``) unless every ``|x| <= 2**R``
and values are finite. Then ``|q * n| <= 2**(F+R) * n`` and the sum cannot overflow
int64 while ``W <= capacity = (2**63 - 1) // 2**(F+R)``; an update that would
exceed the capacity is rejected too. Defaults F=28, R=8: values up to 256, and
2**27 (about 134 million) examples per round.

Precision. With ``m`` the exact (real-number) weighted mean, the result ``r``
satisfies ``|r - m| <= 2**-(F+1) + 2**-24 * |m|`` (plus float64 rounding of
relative size 2**-52): rounding to the grid moves each value at most half a step
and a weighted mean of such errors is no larger; the final float32 cast adds half
an ulp. So the relative error is ``<= 2**-24 + 2**-(F+1) / |m|``; with the
defaults the absolute term is 1.9e-9, below a float32 ulp for ``|m| > 0.016``.

Memory is one int64 array per tensor (8 bytes a parameter), whatever the number
of updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import msgpack
import numpy as np
from numpy.typing import NDArray

from qflare.errors import AggregationError, InvalidUpdateError
from qflare.fl.arrays import NDArrays, Shape, check_like, shapes_of

_STATE_VERSION = 1
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """The fixed-point format: ``frac_bits`` (F) below the binary point, values up to ``2**range_bits``."""

    frac_bits: int = 28
    range_bits: int = 8

    def __post_init__(self) -> None:
        if not (
            0 <= self.frac_bits <= 52 and self.range_bits >= -16 and self.frac_bits + self.range_bits <= 60
        ):
            raise AggregationError(
                f"unsupported fixed-point format F={self.frac_bits}, R={self.range_bits} (need F+R <= 60)",
                field="frac_bits",
            )

    @property
    def max_abs(self) -> float:
        return float(2.0**self.range_bits)

    @property
    def capacity(self) -> int:
        """The largest total weight (sum of ``num_examples``) one sum can hold without overflow."""
        return _INT64_MAX >> (self.frac_bits + self.range_bits)

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
        self.sums = [np.zeros(s, dtype=np.int64) for s in self.shapes]
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
            # `not <=` is also true for NaN, so one comparison rejects non-finite values too.
            if array.size and not float(np.max(np.abs(array))) <= limit:
                raise InvalidUpdateError(
                    f"holds a value that is non-finite or above {limit:g} in magnitude", field=name
                )
        scale = 2.0**self.fmt.frac_bits
        for array, total in zip(weights, self.sums, strict=True):
            # float64 holds any float32 times a power of two exactly, so rint sees the true product.
            q = np.rint(np.multiply(array, scale, dtype=np.float64)).astype(np.int64)
            q *= n
            total += q
        self.total_weight += n
        self.count += 1

    def mean(self) -> NDArrays:
        """The weighted mean as float32 arrays (deterministic in the stored integers)."""
        if self.count == 0:
            raise AggregationError("no updates were accumulated", field="count")
        unscale = 2.0**-self.fmt.frac_bits
        w = float(self.total_weight)
        return [((s.astype(np.float64) / w) * unscale).astype(np.float32) for s in self.sums]

    # --- checkpointing --------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialise (msgpack, sums as little-endian int64) for the aggregator's checkpoint."""
        doc = {
            "v": _STATE_VERSION,
            "frac_bits": self.fmt.frac_bits,
            "range_bits": self.fmt.range_bits,
            "names": self.names,
            "shapes": [list(s) for s in self.shapes],
            "sums": [s.astype("<i8", copy=False).tobytes() for s in self.sums],
            "total_weight": self.total_weight,
            "count": self.count,
        }
        return bytes(msgpack.packb(doc, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise AggregationError(f"accumulator state does not decode: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("v") != _STATE_VERSION:
            raise AggregationError("not a version-1 accumulator state", field="v")
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
            if not isinstance(raw, bytes) or len(raw) != 8 * int(np.prod(shape, dtype=np.int64)):
                raise AggregationError(f"tensor {names[i]!r} has the wrong byte length", field="sums")
            out.sums[i] = np.frombuffer(raw, dtype="<i8").astype(np.int64).reshape(shape)
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
