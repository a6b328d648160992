"""The two kinds of state a strategy has, each serialisable for the aggregator's checkpoints.

- ``StrategyState``: the server's state between rounds (optimiser moments, SCAFFOLD's
  global control variate, a round counter). It changes only when a round closes, so
  the aggregator writes it once per round, with the new global model.
- ``RoundSums``: the exact running sums of the round in progress, one per streamed
  tensor group (``qflare.fl.accumulate``). They change with every accepted update
  and are checkpointed with the round's Kafka position.

A buffered strategy has no sums: its round input is the round's accepted updates
(``qflare.fl.strategy.RoundInput``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import msgpack
import numpy as np
from numpy.typing import NDArray

from qflare.errors import AggregationError
from qflare.fl.accumulate import FixedPointAccumulator
from qflare.types import Scalar

_STATE_VERSION = 2
# Server-side arrays (e.g. optimiser moments) may use only these dtypes in a checkpoint.
_STATE_DTYPES = frozenset({"<f4", "<f8", "<i8"})
_SUMS_VERSION = 1


def _decode_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise AggregationError(f"{what} does not decode: {exc}") from exc
    if not isinstance(doc, dict):
        raise AggregationError(f"{what} is not a map", field="v")
    return doc


def _round_of(doc: Mapping[str, Any]) -> int:
    if type(doc.get("round")) is not int or doc["round"] < 0:
        raise AggregationError("must be a non-negative integer", field="round")
    return int(doc["round"])


@dataclass(slots=True)
class StrategyState:
    """The server's state between rounds; written once per round."""

    strategy: str
    #: The last round whose aggregate this state includes (0: none yet).
    round: int = 0
    arrays: dict[str, NDArray[Any]] = field(default_factory=dict)
    scalars: dict[str, Scalar] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        arrays = {}
        for name, a in self.arrays.items():
            tag = a.dtype.newbyteorder("<").str
            if tag not in _STATE_DTYPES:
                raise AggregationError(f"dtype {tag} cannot be checkpointed", field=f"arrays.{name}")
            arrays[name] = {
                "dtype": tag,
                "shape": list(a.shape),
                "data": np.ascontiguousarray(a, tag).tobytes(),
            }
        doc = {
            "v": _STATE_VERSION,
            "strategy": self.strategy,
            "round": self.round,
            "arrays": arrays,
            "scalars": self.scalars,
        }
        return bytes(msgpack.packb(doc, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode a state; a version-1 state (which also held the round's sum) loads without it."""
        doc = _decode_map(data, "strategy state")
        if doc.get("v") not in (1, _STATE_VERSION):
            raise AggregationError("not a version-1 or -2 strategy state", field="v")
        if not isinstance(doc.get("strategy"), str):
            raise AggregationError("must be a string", field="strategy")
        scalars, raw_arrays = doc.get("scalars"), doc.get("arrays")
        if not isinstance(scalars, dict) or not all(
            isinstance(v, str | int | float | bool) or v is None for v in scalars.values()
        ):
            raise AggregationError("must map names to scalars", field="scalars")
        if not isinstance(raw_arrays, dict):
            raise AggregationError("must be a map", field="arrays")
        arrays: dict[str, NDArray[Any]] = {}
        for name, spec in raw_arrays.items():
            try:
                dtype = np.dtype(spec["dtype"]) if spec["dtype"] in _STATE_DTYPES else None
                shape = tuple(int(d) for d in spec["shape"])
                if dtype is None or any(d < 0 for d in shape):
                    raise ValueError("bad dtype or shape")
                arrays[name] = np.frombuffer(spec["data"], dtype=dtype).reshape(shape).copy()
            except (KeyError, TypeError, ValueError) as exc:
                raise AggregationError(f"does not decode: {exc}", field=f"arrays.{name}") from exc
        return cls(strategy=doc["strategy"], round=_round_of(doc), arrays=arrays, scalars=scalars)


@dataclass(slots=True)
class RoundSums:
    """The running sums of one round, one exact accumulator per streamed group."""

    round: int
    sums: dict[str, FixedPointAccumulator] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Updates folded in so far (every group sees every update)."""
        return max((acc.count for acc in self.sums.values()), default=0)

    def to_bytes(self) -> bytes:
        doc = {
            "v": _SUMS_VERSION,
            "round": self.round,
            "sums": {name: acc.to_bytes() for name, acc in sorted(self.sums.items())},
        }
        return bytes(msgpack.packb(doc, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode sums; a version-1 ``StrategyState`` checkpoint gives its sum as the ``weights`` group."""
        doc = _decode_map(data, "round sums")
        raw: object
        if "strategy" in doc and doc.get("v") == 1:  # written before the split, mid-round
            acc = doc.get("accumulator")
            raw = {} if acc is None else {"weights": acc}
        elif doc.get("v") == _SUMS_VERSION:
            raw = doc.get("sums")
        else:
            raise AggregationError("not a version-1 round-sums document", field="v")
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in raw.items()
        ):
            raise AggregationError("must map group names to bytes", field="sums")
        sums = {name: FixedPointAccumulator.from_bytes(value) for name, value in raw.items()}
        return cls(round=_round_of(doc), sums=sums)
