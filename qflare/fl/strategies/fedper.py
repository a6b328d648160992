"""FedPer (Arivazhagan et al., 2019, "Federated Learning with Personalization Layers"): shared base
layers averaged by FedAvg, personal layers that never leave the device.

The model's tensors split in two by ``personal``, a regular expression matched against
each tensor name (``re.fullmatch``):

- shared tensors: devices train and send them; the server replaces them with the
  example-weighted mean ``Σ n_k w_k / Σ n_k`` (FedAvg's exact sum);
- personal tensors (the paper's personalisation layers, by default the output layer):
  each device trains and keeps its own; they are not in the update spec, so a device
  that sent one would be refused, and the global model's copies stay as they were.

``personal`` empty means the model's last two tensors (its output layer's weight and
bias: ``fc3.*`` for the built-in 2nn, ``fc2.*`` for the CNN); a model-store model
needs the regex spelled out. Devices are always sent the explicit regex
(``TrainConfig.personal``) and evaluate their personalised model on their own test
split (``personal_accuracy``, ``personal_loss``, ``personal_examples``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator

from qflare.errors import AggregationError, ConfigError
from qflare.fl.accumulate import FixedPoint
from qflare.fl.arrays import NDArrays, Shape, check_like, shapes_of
from qflare.fl.job import JobSpec, StrategyParams, TrainConfig
from qflare.fl.registry import register_strategy
from qflare.fl.spec import WEIGHTS, GroupSpec, UpdateSpec
from qflare.fl.state import StrategyState
from qflare.fl.strategy import RoundInput, Strategy


class FedPerParams(StrategyParams):
    name: Literal["fedper"] = "fedper"
    personal: str = Field(
        "",
        max_length=1000,
        description="Regex (fullmatch) of personal tensor names; empty: the model's last two tensors.",
    )

    @field_validator("personal")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        return value


def _builtin_names(job: JobSpec) -> list[str] | None:
    if job.builtin is None:
        return None
    # Imported here: qflare.ml.arch imports qflare.fl, which imports every strategy module.
    from qflare.ml.arch import tensor_names

    return tensor_names(job.builtin)


def shared_positions(shared: Sequence[Shape], model: Sequence[Shape]) -> list[int]:
    """Where the shared tensors sit in the model, from shapes and order alone; refused if ambiguous.

    The leftmost and rightmost embeddings of ``shared`` in ``model`` bound every other
    one, so the embedding is unique exactly when the two agree.
    """

    def leftmost(a: Sequence[Shape], b: Sequence[Shape]) -> list[int] | None:
        out, j = [], 0
        for shape in a:
            while j < len(b) and tuple(b[j]) != tuple(shape):
                j += 1
            if j == len(b):
                return None
            out.append(j)
            j += 1
        return out

    left = leftmost(shared, model)
    right = leftmost(shared[::-1], model[::-1])
    if left is None or right is None:
        raise AggregationError("the shared tensors do not fit the global model", field="weights")
    right = [len(model) - 1 - j for j in right[::-1]]
    if left != right:
        raise AggregationError(
            "the shared tensors' place in the global model is ambiguous by shape", field="weights"
        )
    return left


def merge_shared(
    global_weights: Sequence[NDArray[Any]], mean: Sequence[NDArray[Any]], at: Sequence[int]
) -> NDArrays:
    """The global model with the tensors at positions ``at`` replaced by ``mean``; the rest copied."""
    out = [np.array(w, dtype=np.float32) for w in global_weights]
    for i, m in zip(at, mean, strict=True):
        out[i] = np.asarray(m, np.float32)
    return out


@register_strategy
class FedPer(Strategy):
    """FedAvg over shared tensors; personal layers stay on the devices (Arivazhagan et al., 2019)."""

    name = "fedper"
    Params: ClassVar[type[StrategyParams]] = FedPerParams

    def __init__(self, job: JobSpec | None = None, *, fixed_point: FixedPoint | None = None) -> None:
        super().__init__(job, fixed_point=fixed_point)
        params = self.job.strategy
        assert isinstance(params, FedPerParams)  # checked by the base class
        names = _builtin_names(self.job)
        if params.personal:
            self.personal = params.personal
        elif names is not None and len(names) >= 2:
            self.personal = "|".join(re.escape(n) for n in names[-2:])
        else:
            raise ConfigError(
                "a model-store model needs the personal tensors named (a regex)", field="strategy.personal"
            )
        self._pattern = re.compile(self.personal)
        #: The built-in model's tensor names (None for a model-store model): placing shared tensors by name.
        self._names = names

    def is_personal(self, name: str) -> bool:
        return self._pattern.fullmatch(name) is not None

    def train_config(self, round: int) -> TrainConfig:
        return super().train_config(round).model_copy(update={"personal": self.personal})

    def update_spec(self, names: Sequence[str], shapes: Sequence[Shape]) -> UpdateSpec:
        """Only the shared tensors: a personal tensor in an update is refused."""
        kept = [(n, tuple(s)) for n, s in zip(names, shapes, strict=True) if not self.is_personal(n)]
        if not kept:
            raise ConfigError(f"{self.personal!r} leaves no tensor shared", field="strategy.personal")
        if self._names is None:
            self._check_placeable(names, shapes)
        group = GroupSpec(tuple(n for n, _ in kept), tuple(s for _, s in kept), self.fixed_point.max_abs)
        return UpdateSpec({WEIGHTS: group})

    def _check_placeable(self, names: Sequence[str], shapes: Sequence[Shape]) -> None:
        """Refuse the job now, not at round close, if ``aggregate`` could not place the shared tensors.

        It gets no tensor names for a model-store model, so it places them by shape and order.
        """
        shared = [i for i, n in enumerate(names) if not self.is_personal(n)]
        if len(shared) == len(names):
            return
        model = [tuple(s) for s in shapes]
        try:
            placed = shared_positions([model[i] for i in shared], model)
        except AggregationError:
            placed = []
        if placed != shared:
            raise ConfigError(
                f"{self.personal!r} leaves shared tensors whose place is ambiguous by shape",
                field="strategy.personal",
            )

    def _positions(self, shared: Sequence[str], shapes: Sequence[Shape], model: Sequence[Shape]) -> list[int]:
        names = self._names
        if names is not None and len(names) == len(model) and all(n in names for n in shared):
            return [names.index(n) for n in shared]
        # A model-store model: the aggregate gets no tensor names, so place the shared ones by shape.
        return shared_positions(shapes, model)

    def aggregate(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        self._check_owner(state)
        sums = self._sums(round)
        acc = sums.sums[WEIGHTS]
        at = self._positions(acc.names, acc.shapes, shapes_of(global_weights))
        check_like([global_weights[i] for i in at], acc.shapes, acc.names)
        return merge_shared(global_weights, acc.mean(), at), replace(state, round=sums.round)
