"""Error and speed of the exact fixed-point sum: the version-1 format against the current one.

Run from the repository root: ``python bench/fixed_point.py [--size N] [--reps N]``.

Error table. For each magnitude 1e-8 ... 1e6 and each pattern of example counts,
``--updates`` updates of ``--size`` float32 values are summed by both formats and
compared with a float64 reference (``sum(x * n) / W`` in float64, whose own error
is about 1e-16 relative). Each element keeps one sign across the updates and
values lie in [0.5, 1] times the magnitude, so the mean is of that magnitude and a
relative error is meaningful. Reported per cell: the largest relative error
``|r - m| / |m|`` and the largest absolute error ``|r - m|``, or the reason the
format refuses the inputs (``out_of_range`` for a value, ``num_examples`` for the
round's total weight).

  v1   the previous format, re-implemented here as it was: int64 sums, F=28 fraction
       bits, |x| <= 256, at most 2**27 - 1 examples per round.
  v2   ``qflare.fl.FixedPointAccumulator`` with its defaults (int128 sums, F=56,
       |x| <= 2**20, at most 2**48 - 1 examples per round).

Speed. Adding one update of the FedAvg CNN's size (1,663,370 float32 values,
weights-like values ~ N(0, 0.05), n = 600), both formats in the same run,
interleaved over ``--reps`` rounds; the median time of each and the ratio
v2 / v1 (above 1: v2 is slower). Also the size of the v2 checkpoint of that sum,
in bytes a parameter (v1 wrote 8).

The last line is one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qflare.errors import InvalidUpdateError  # noqa: E402
from qflare.fl import FixedPointAccumulator  # noqa: E402

CNN_PARAMS = 1_663_370
MAGNITUDES = [10.0**e for e in range(-8, 7)]
#: Totals per pattern; each is split over the updates.
COUNTS = {"n~600": 0, "W=2^27-1": 2**27 - 1, "W=2^40": 2**40}


class V1Sum:
    """The version-1 sum, as it was: int64, ``q = rint(x * 2**28)``, |x| <= 256."""

    frac_bits, max_abs, capacity = 28, 256.0, ((1 << 63) - 1) >> 36

    def __init__(self, size: int) -> None:
        self.sum = np.zeros(size, dtype=np.int64)
        self.total = 0

    def add(self, x: NDArray[np.float32], n: int) -> None:
        if self.total + n > self.capacity:
            raise InvalidUpdateError("over capacity", field="num_examples")
        if not float(np.max(np.abs(x))) <= self.max_abs:
            raise InvalidUpdateError("out of range", field="x")
        q = np.rint(np.multiply(x, 2.0**self.frac_bits, dtype=np.float64)).astype(np.int64)
        q *= n
        self.sum += q
        self.total += n

    def mean(self) -> NDArray[np.float32]:
        return ((self.sum.astype(np.float64) / float(self.total)) * 2.0**-self.frac_bits).astype(np.float32)


class V2Sum:
    def __init__(self, size: int) -> None:
        self.acc = FixedPointAccumulator(["x"], [(size,)])

    def add(self, x: NDArray[np.float32], n: int) -> None:
        self.acc.add([x], n)

    def mean(self) -> NDArray[np.float32]:
        return self.acc.mean()[0]


FORMATS: dict[str, Callable[[int], V1Sum | V2Sum]] = {"v1": V1Sum, "v2": V2Sum}


def _counts(rng: np.random.Generator, total: int, updates: int) -> list[int]:
    if total == 0:
        return [int(c) for c in rng.integers(100, 1100, updates)]
    cuts = np.sort(rng.choice(np.arange(1, total, max(1, total // 10_000)), updates - 1, replace=False))
    return [int(c) for c in np.diff(np.concatenate([[0], cuts, [total]]))]


def error_cell(fmt: str, magnitude: float, label: str, size: int, updates: int) -> dict[str, Any]:
    total = COUNTS[label]
    rng = np.random.default_rng(round(float(np.log10(magnitude))) + 100 + total % 1000)
    sign = rng.choice([-1.0, 1.0], size)
    counts = _counts(rng, total, updates)
    acc = FORMATS[fmt](size)
    reference = np.zeros(size)
    refused = None
    for n in counts:
        x = (magnitude * rng.uniform(0.5, 1.0, size) * sign).astype(np.float32)
        reference += x.astype(np.float64) * float(n)
        try:
            acc.add(x, n)
        except InvalidUpdateError as exc:
            refused = "num_examples" if exc.field == "num_examples" else "out_of_range"
            break
    cell: dict[str, Any] = {
        "format": fmt,
        "magnitude": magnitude,
        "examples": label,
        "total_examples": sum(counts),
    }
    if refused:
        return cell | {"refused": refused}
    reference /= float(sum(counts))
    err = np.abs(acc.mean().astype(np.float64) - reference)
    return cell | {"max_rel": float(np.max(err / np.abs(reference))), "max_abs": float(np.max(err))}


def speed(reps: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(CNN_PARAMS) * 0.05).astype(np.float32)
    sums: dict[str, V1Sum | V2Sum] = {name: make(CNN_PARAMS) for name, make in FORMATS.items()}
    times: dict[str, list[float]] = {name: [] for name in FORMATS}
    for _ in range(reps):
        for name, acc in sums.items():
            acc.add(x, 600)  # untimed warm-up of this round
            t0 = time.perf_counter()
            acc.add(x, 600)
            times[name].append(time.perf_counter() - t0)
    v1, v2 = statistics.median(times["v1"]), statistics.median(times["v2"])
    state = sums["v2"]
    assert isinstance(state, V2Sum)
    return {
        "add_ms_v1": v1 * 1e3,
        "add_ms_v2": v2 * 1e3,
        "add_time_ratio_v2_over_v1": v2 / v1,
        # Version 1 stored 8 bytes (one int64) a parameter.
        "state_bytes_per_param_v1": 8.0,
        "state_bytes_per_param_v2": len(state.acc.to_bytes()) / CNN_PARAMS,
    }


def _fmt(cell: dict[str, Any]) -> str:
    if "refused" in cell:
        return f"{'refused: ' + cell['refused']:>21}"
    return f"{cell['max_rel']:10.2e} {cell['max_abs']:10.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20_000, help="values per update in the error table")
    parser.add_argument("--updates", type=int, default=8, help="updates per cell")
    parser.add_argument("--reps", type=int, default=9, help="interleaved speed rounds")
    args = parser.parse_args()

    cells = [
        error_cell(fmt, m, label, args.size, args.updates)
        for label in COUNTS
        for m in MAGNITUDES
        for fmt in FORMATS
    ]
    print(f"max relative / absolute error against float64 ({args.updates} updates of {args.size} values)")
    print(f"{'examples':>9} {'magnitude':>9} | {'v1 rel':>10} {'v1 abs':>10} | {'v2 rel':>10} {'v2 abs':>10}")
    for label in COUNTS:
        for m in MAGNITUDES:
            row = {c["format"]: c for c in cells if c["magnitude"] == m and c["examples"] == label}
            print(f"{label:>9} {m:9.0e} | {_fmt(row['v1'])} | {_fmt(row['v2'])}")
    result = speed(args.reps)
    print(
        f"add one CNN-sized update (n=600): v1 {result['add_ms_v1']:.1f} ms, v2 {result['add_ms_v2']:.1f} ms,"
        f" v2/v1 time ratio {result['add_time_ratio_v2_over_v1']:.2f}"
    )
    print(f"checkpoint bytes a parameter: v1 8, v2 {result['state_bytes_per_param_v2']:.2f}")
    v2_ok = [c for c in cells if c["format"] == "v2" and "refused" not in c]
    summary = {
        "errors": cells,
        "v2_max_rel": max(c["max_rel"] for c in v2_ok),
        "v2_refused": [c for c in cells if c["format"] == "v2" and "refused" in c],
        **result,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
