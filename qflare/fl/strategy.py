"""The strategy interface: what to ask devices for, and how to fold their answers in.

A strategy object holds only immutable hyperparameters. Everything that changes
lives in a ``StrategyState`` that the caller owns and checkpoints (``to_bytes``),
so the aggregator can be killed between any two calls and resume from the last
stored state: no method relies on another having been called on this object.

A round, as the aggregator drives it::

    state = strategy.begin_round(state, rnd, shapes, names)           # fresh, empty sum
    task_config = strategy.configure_round(state, rnd).to_config()     # -> RoundTask.config
    strategy.accumulate(state, Update(weights, num_examples))          # per update, in place
    new_global, state = strategy.aggregate(state, global_weights)      # when quorum/deadline is met
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple, Self

import msgpack
import numpy as np
from numpy.typing import NDArray

from qflare.errors import AggregationError, ConfigError, SchemaError
from qflare.fl.accumulate import FixedPoint, FixedPointAccumulator
from qflare.fl.arrays import NDArrays, Shape
from qflare.types import Scalar

_STATE_VERSION = 1
# Server-side arrays (e.g. optimiser moments) may use only these dtypes in a checkpoint.
_STATE_DTYPES = frozenset({"<f4", "<f8", "<i8"})


class Update(NamedTuple):
    """One device's result: weights in the global model's tensor order, and its example count."""

    weights: Sequence[NDArray[Any]]
    num_examples: int


def _number(config: Mapping[str, Scalar], key: str, lo: float, *, integer: bool) -> float:
    value = config.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise SchemaError(
            f"must be {'an integer' if integer else 'a number'}, got {value!r}", field=f"config.{key}"
        )
    if value < lo:
        raise SchemaError(f"must be >= {lo}, got {value!r}", field=f"config.{key}")
    return float(value)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Local-training instructions for one round (travels as ``RoundTask.config``)."""

    epochs: int
    batch_size: int  # 0 means the whole local dataset per step (the paper's B = infinity)
    lr: float
    extra: Mapping[str, Scalar] = field(default_factory=dict)

    def to_config(self) -> dict[str, Scalar]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, **self.extra}

    @classmethod
    def from_config(cls, config: Mapping[str, Scalar]) -> Self:
        """Parse a received task config; unknown keys are kept in ``extra``."""

        out = cls(
            epochs=int(_number(config, "epochs", 1, integer=True)),
            batch_size=int(_number(config, "batch_size", 0, integer=True)),
            lr=_number(config, "lr", 0.0, integer=False),
            extra={k: v for k, v in config.items() if k not in ("epochs", "batch_size", "lr")},
        )
        if out.lr <= 0:
            raise SchemaError(f"must be positive, got {out.lr!r}", field="config.lr")
        return out

    def get_float(self, key: str, default: float) -> float:
        value = self.extra.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SchemaError(f"must be a number, got {value!r}", field=f"config.{key}")
        return float(value)


@dataclass(slots=True)
class StrategyState:
    """Everything a strategy carries between calls; serialisable for the aggregator's checkpoint."""

    strategy: str
    round: int = 0
    #: The running sum of the round in progress; ``None`` between rounds.
    accumulator: FixedPointAccumulator | None = None
    #: Server-side arrays that outlive a round (e.g. FedAdam's moments). FedAvg has none.
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
            "accumulator": None if self.accumulator is None else self.accumulator.to_bytes(),
            "arrays": arrays,
            "scalars": self.scalars,
        }
        return bytes(msgpack.packb(doc, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise AggregationError(f"strategy state does not decode: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("v") != _STATE_VERSION:
            raise AggregationError("not a version-1 strategy state", field="v")
        if not isinstance(doc.get("strategy"), str):
            raise AggregationError("must be a string", field="strategy")
        if type(doc.get("round")) is not int or doc["round"] < 0:
            raise AggregationError("must be a non-negative integer", field="round")
        acc = doc.get("accumulator")
        if acc is not None and not isinstance(acc, bytes):
            raise AggregationError("must be bytes or nil", field="accumulator")
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
        return cls(
            strategy=doc["strategy"],
            round=doc["round"],
            accumulator=None if acc is None else FixedPointAccumulator.from_bytes(acc),
            arrays=arrays,
            scalars=scalars,
        )


class Strategy(ABC):
    """Base of all strategies: streaming accumulation of example-weighted updates."""

    name: ClassVar[str]

    def __init__(
        self, *, epochs: int = 1, batch_size: int = 10, lr: float = 0.1, fixed_point: FixedPoint | None = None
    ) -> None:
        for key, value, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"must be an integer >= {lo}, got {value!r}", field=key)
        if not lr > 0:
            raise ConfigError(f"must be positive, got {lr!r}", field="lr")
        self.epochs, self.batch_size, self.lr = epochs, batch_size, float(lr)
        self.fixed_point = fixed_point or FixedPoint()

    def initial_state(self) -> StrategyState:
        return StrategyState(strategy=self.name)

    @abstractmethod
    def configure_round(self, state: StrategyState, round: int) -> TrainConfig:
        """What devices should do in ``round``."""

    def begin_round(
        self, state: StrategyState, round: int, shapes: Sequence[Shape], names: Sequence[str]
    ) -> StrategyState:
        """A copy of ``state`` with an empty sum for ``round`` (any unfinished sum is dropped).

        It takes the model's tensor shapes, not its weights: an empty sum needs no
        values, so the caller need not load the global model to open a round.
        """
        self._check_owner(state)
        acc = FixedPointAccumulator(names, shapes, self.fixed_point)
        return replace(state, round=round, accumulator=acc)

    def accumulate(self, state: StrategyState, update: Update) -> None:
        """Fold one update into ``state``'s sum, in place (O(model) memory, exact, order-free)."""
        self._running(state).add(update.weights, update.num_examples)

    @abstractmethod
    def aggregate(
        self, state: StrategyState, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        """Close the round: the new global weights and the state to carry into the next round."""

    def _running(self, state: StrategyState) -> FixedPointAccumulator:
        self._check_owner(state)
        if state.accumulator is None:
            raise AggregationError(f"round {state.round} has not begun", field="accumulator")
        return state.accumulator

    def _check_owner(self, state: StrategyState) -> None:
        if state.strategy != self.name:
            raise AggregationError(
                f"state belongs to {state.strategy!r}, not {self.name!r}", field="strategy"
            )
