"""The strategy interface: what to ask devices for, and how to fold their answers in.

A strategy object holds only its job's immutable settings (``JobSpec``, with the
strategy's own parameters in ``job.strategy``). Everything that changes lives in a
``StrategyState`` that the caller owns and checkpoints (``to_bytes``), so the
aggregator can be killed between any two calls and resume from the last stored
state: no method relies on another having been called on this object.

A round, as the services drive it::

    configs = strategy.configure_round(rnd, devices)                   # scheduler -> RoundTask.config
    state = strategy.begin_round(state, rnd, shapes, names)           # aggregator: fresh, empty sum
    strategy.accumulate(state, Update(weights, num_examples))          # per update, in place
    new_global, state = strategy.aggregate(state, global_weights)      # when quorum/deadline is met

``configure_round`` depends only on the job, the round and the selection: the
scheduler, which sends the instructions, does not hold the aggregator's state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple, Self

import msgpack
import numpy as np
from numpy.typing import NDArray

from qflare.errors import AggregationError, ConfigError
from qflare.fl.accumulate import FixedPoint, FixedPointAccumulator
from qflare.fl.arrays import NDArrays, Shape
from qflare.fl.job import JobSpec, StrategyParams, TrainConfig
from qflare.types import Scalar

_STATE_VERSION = 1
# Server-side arrays (e.g. optimiser moments) may use only these dtypes in a checkpoint.
_STATE_DTYPES = frozenset({"<f4", "<f8", "<i8"})


class Update(NamedTuple):
    """One device's result: weights in the global model's tensor order, and its example count."""

    weights: Sequence[NDArray[Any]]
    num_examples: int


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
    """Base of all strategies: streaming accumulation of example-weighted updates.

    A subclass names itself (``name``), declares its parameters (``Params``, whose
    ``name`` is the same literal) and is registered with
    ``qflare.fl.registry.register_strategy``.
    """

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]]

    def __init__(self, job: JobSpec | None = None, *, fixed_point: FixedPoint | None = None) -> None:
        job = job if job is not None else JobSpec(strategy=self.Params.model_validate({"name": self.name}))
        if not isinstance(job.strategy, self.Params):
            raise ConfigError(
                f"the job's strategy is {job.strategy.name!r}, not {self.name!r}", field="strategy.name"
            )
        self.job = job
        self.fixed_point = fixed_point or FixedPoint()

    def initial_state(self) -> StrategyState:
        return StrategyState(strategy=self.name)

    def configure_round(self, round: int, devices: Sequence[str]) -> dict[str, TrainConfig]:
        """Each selected device's instructions for ``round``; by default the same for all."""
        config = self.train_config(round)
        return dict.fromkeys(devices, config)

    def train_config(self, round: int) -> TrainConfig:
        """Local SGD as the job sets it, with no proximal term: what FedAvg asks of every device."""
        job = self.job
        return TrainConfig(
            model=job.model,
            dataset=job.dataset,
            seed=job.seed,
            epochs=job.epochs,
            batch_size=job.batch_size,
            lr=job.lr,
            proximal_mu=0.0,
            evaluate=job.evaluate_local,
            evaluate_global=job.evaluation == "federated",
            train=True,
        )

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
