"""The strategy interface: what to ask devices for, what to check, and how to fold their answers in.

A strategy object holds only its job's immutable settings (``JobSpec``, with the
strategy's own parameters in ``job.strategy``). Everything that changes lives in
objects the caller owns and checkpoints, so the aggregator can be killed between any
two calls and resume: no method relies on another having been called on this object.

- ``StrategyState`` (``qflare.fl.state``): the server's state between rounds, written
  once per round (optimiser moments, a global control variate).
- The round's input, in one of two modes (``Strategy.mode``):

  - ``"streaming"``: ``RoundSums``, exact running sums of each tensor group, O(model)
    memory whatever the number of updates;
  - ``"buffered"``: every accepted ``Update`` of the round, handed to ``aggregate``
    in device-id order (robust aggregators need them all at once).

A round, as the services drive it::

    spec = strategy.update_spec(names, shapes)                         # aggregator: the checks
    configs = strategy.configure_round(rnd, devices)                   # scheduler -> RoundTask.config
    extra = strategy.server_groups(state)                              # published with the model
    sums = strategy.begin_round(state, rnd, names, shapes)             # streaming: empty sums
    strategy.accumulate(sums, update)                                  # streaming: per update
    new_global, state = strategy.aggregate(state, sums_or_updates, global_weights)

``configure_round`` depends only on the job, the round and the selection: the
scheduler, which sends the instructions, does not hold the aggregator's state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal, NamedTuple

from numpy.typing import NDArray

from qflare.errors import AggregationError, ConfigError
from qflare.fl.accumulate import FixedPoint, FixedPointAccumulator
from qflare.fl.arrays import NDArrays, Shape
from qflare.fl.job import JobSpec, StrategyParams, TrainConfig
from qflare.fl.spec import WEIGHTS, GroupSpec, UpdateSpec
from qflare.fl.state import RoundSums, StrategyState
from qflare.reasons import Reason

Mode = Literal["streaming", "buffered"]
#: Refusals that prove the selected device faulty (a claim over its approved dataset size, a
#: suspended device): each spends one of a robust rule's f for the round (``Strategy.excluding``).
KNOWN_FAULTY_REASONS = frozenset({Reason.OVER_CLAIM.value, Reason.SUSPENDED.value})
_NO_METRICS: Mapping[str, float] = MappingProxyType({})


class Update(NamedTuple):
    """One device's accepted result: its tensor groups by name, its example count and its metrics."""

    device_id: str
    groups: Mapping[str, Sequence[NDArray[Any]]]
    num_examples: int
    metrics: Mapping[str, float] = _NO_METRICS

    @property
    def weights(self) -> Sequence[NDArray[Any]]:
        return self.groups[WEIGHTS]


#: What ``aggregate`` receives: the sums (streaming) or the updates in device-id order (buffered).
RoundInput = RoundSums | Sequence[Update]


class Strategy(ABC):
    """Base of all strategies; by default streaming, example-weighted, weights only.

    A subclass names itself (``name``), declares its parameters (``Params``, whose
    ``name`` is the same literal) and is registered with
    ``qflare.fl.registry.register_strategy``. A variant overrides one step and
    calls ``super()``.
    """

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]]
    mode: ClassVar[Mode] = "streaming"

    def __init__(self, job: JobSpec | None = None, *, fixed_point: FixedPoint | None = None) -> None:
        job = job if job is not None else JobSpec(strategy=self.Params.model_validate({"name": self.name}))
        if not isinstance(job.strategy, self.Params):
            raise ConfigError(
                f"the job's strategy is {job.strategy.name!r}, not {self.name!r}", field="strategy.name"
            )
        self.job = job
        self.fixed_point = fixed_point or FixedPoint()

    # --- what devices are asked, and what they must send --------------------------------

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

    def update_spec(self, names: Sequence[str], shapes: Sequence[Shape]) -> UpdateSpec:
        """The groups and metrics an update must carry: by default every weight, within the sum's range."""
        group = GroupSpec(tuple(names), tuple(tuple(s) for s in shapes), self.fixed_point.max_abs)
        return UpdateSpec({WEIGHTS: group})

    def server_groups(self, state: StrategyState) -> dict[str, NDArrays]:
        """Tensor groups sent to devices with the global model (e.g. SCAFFOLD's control); none by default."""
        return {}

    # --- the round ---------------------------------------------------------------------

    def begin_round(
        self, state: StrategyState, round: int, names: Sequence[str], shapes: Sequence[Shape]
    ) -> RoundSums:
        """Empty sums for ``round``, one per group of the update spec (none for a buffered strategy).

        It takes the model's tensor shapes, not its weights: an empty sum needs no
        values, so the caller need not load the global model to open a round.
        """
        self._check_owner(state)
        if self.mode == "buffered":
            return RoundSums(round=round)
        spec = self.update_spec(names, shapes)
        return RoundSums(
            round=round,
            sums={g: self._empty(s) for g, s in spec.groups.items()},
        )

    def accumulate(self, sums: RoundSums, update: Update) -> None:
        """Fold one update into the round's sums, in place (exact, order-free). Streaming only."""
        if self.mode != "streaming":
            raise AggregationError(f"{self.name} buffers updates; it keeps no sums", field="mode")
        spec = {g: s.weighting for g, s in self._weightings(sums).items()}
        for group, acc in sums.sums.items():
            weight = update.num_examples if spec[group] == "examples" else 1
            acc.add(update.groups[group], weight)

    def excluding(self, known_faulty: int) -> Strategy:
        """The rule for a round in which ``known_faulty`` selected devices were already refused for
        misbehaving (``KNOWN_FAULTY_REASONS``); only a rule with a Byzantine budget changes."""
        return self

    @abstractmethod
    def aggregate(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        """Close the round: the new global weights and the server state to carry into the next round."""

    # --- helpers for subclasses ---------------------------------------------------------

    def _empty(self, group: GroupSpec) -> FixedPointAccumulator:
        return FixedPointAccumulator(group.names, group.shapes, self.fixed_point)

    def _weightings(self, sums: RoundSums) -> dict[str, GroupSpec]:
        any_acc = next(iter(sums.sums.values()), None)
        if any_acc is None:
            raise AggregationError(f"round {sums.round} has no sums", field="sums")
        weights = sums.sums.get(WEIGHTS, any_acc)
        spec = self.update_spec(weights.names, weights.shapes)
        if set(spec.groups) != set(sums.sums):
            raise AggregationError(
                f"sums hold groups {sorted(sums.sums)}, the strategy expects {sorted(spec.groups)}",
                field="sums",
            )
        return dict(spec.groups)

    def _sums(self, round: RoundInput) -> RoundSums:
        if not isinstance(round, RoundSums):
            raise AggregationError(f"{self.name} aggregates running sums, not buffered updates", field="mode")
        if not round.sums or round.count == 0:
            raise AggregationError(f"round {round.round} has no updates to aggregate", field="sums")
        return round

    def _updates(self, round: RoundInput) -> Sequence[Update]:
        if isinstance(round, RoundSums):
            raise AggregationError(f"{self.name} needs the round's updates, not sums", field="mode")
        if not round:
            raise AggregationError("the round has no updates to aggregate", field="updates")
        ids = [u.device_id for u in round]
        if ids != sorted(set(ids)):
            raise AggregationError("updates must come once each, in device-id order", field="updates")
        return round

    def _check_owner(self, state: StrategyState) -> None:
        if state.strategy != self.name:
            raise AggregationError(
                f"state belongs to {state.strategy!r}, not {self.name!r}", field="strategy"
            )
