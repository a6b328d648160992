"""One job schema: what an operator asks for, and what a device is told each round.

``JobSpec`` is a job as the operator's ``JobCommand("start", config)`` carries it.
The CLI, the scheduler and the aggregator all parse it here. ``TrainConfig`` is one
round's instructions to a device (``RoundTask.config``): the job's strategy builds it
(``Strategy.configure_round``) and the device parses it. Both refuse unknown keys,
and a bad document raises ``SchemaError`` whose ``field`` is pydantic's location of
the first error under a prefix, e.g. ``config.strategy.proximal_mu``.

The strategy's own parameters are a sub-model chosen by the strategy's ``name``
(``{"name": "fedprox", "proximal_mu": 0.01}``): a pydantic union discriminated on
``name`` over every registered ``StrategyParams`` class. Registration
(``qflare.fl.registry.register_strategy``) adds a class to the union, so a new
strategy module brings its parameters with it and nothing here changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from qflare.errors import ConfigError, SchemaError
from qflare.ml.data import DatasetName
from qflare.types import Scalar

#: How a simulated fleet splits the training set (``qflare.ml.partition``).
PartitionName = Literal["iid", "pathological", "dirichlet"]
#: Who evaluates the global model: the aggregator on the dataset's test split, or the devices.
EvaluationMode = Literal["central", "federated"]
#: How updates are weighted (``qflare.fl.weighting``).
WeightingPolicy = Literal["declared", "equal"]
#: A job setting on the wire: a scalar, or one level of named scalars (the strategy's parameters).
Setting = Scalar | dict[str, Scalar]

BUILTIN = "builtin:"
_STORE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}@[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _builtin_names() -> tuple[str, ...]:
    # Imported late: qflare.ml.arch imports qflare.fl.arrays, so a module-level import would be circular.
    from qflare.ml.arch import MODEL_NAMES

    return MODEL_NAMES


def _check_model_ref(ref: str) -> str:
    if ref.startswith(BUILTIN):
        known = _builtin_names()
        if ref.removeprefix(BUILTIN) not in known:
            raise ValueError(f"unknown built-in model {ref!r}; known: {[BUILTIN + n for n in known]}")
        return ref
    if not _STORE_REF.fullmatch(ref):
        raise ValueError(
            f"{ref!r} is neither 'builtin:<name>' ({', '.join(_builtin_names())}) "
            "nor '<name>@<version>' of the model store"
        )
    return ref


#: A model: ``builtin:cnn``, ``builtin:2nn``, or ``<name>@<version>`` in the model store.
ModelRef = Annotated[str, AfterValidator(_check_model_ref)]


def builtin_model(ref: str) -> str | None:
    """The built-in architecture ``ref`` names (``cnn``, ``2nn``), or None for a model-store reference."""
    return ref.removeprefix(BUILTIN) if ref.startswith(BUILTIN) else None


_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class StrategyParams(BaseModel):
    """A strategy's own parameters; each strategy subclasses it with ``name: Literal[...]``."""

    model_config = _STRICT
    name: str


_PARAMS: dict[str, type[StrategyParams]] = {}
_union: TypeAdapter[StrategyParams] | None = None


def register_params(cls: type[StrategyParams]) -> None:
    """Add ``cls`` to the union ``JobSpec.strategy`` accepts (called by ``register_strategy``)."""
    global _union
    field = cls.model_fields["name"]
    name = field.default
    if not isinstance(name, str) or get_args(field.annotation) != (name,):
        raise ConfigError(f"{cls.__name__}.name must be Literal[<name>] = <name>", field="name")
    if _PARAMS.get(name, cls) is not cls:
        raise ConfigError(f"strategy {name!r} is registered already", field="name")
    _PARAMS[name] = cls
    _union = None  # rebuilt on next use, with the new member


def _strategy_union() -> TypeAdapter[StrategyParams]:
    global _union
    if _union is None:
        members = tuple(_PARAMS.values())
        if len(members) == 1:  # pydantic needs two members for a discriminated union
            _union = TypeAdapter(members[0])
        else:
            union: Any = Union[members]  # noqa: UP007 (built at run time from the registry)
            _union = TypeAdapter(Annotated[union, Field(discriminator="name")])
    return _union


def _default_strategy() -> StrategyParams:
    return _PARAMS["fedavg"].model_validate({"name": "fedavg"})


def _first_error(exc: ValidationError, where: str) -> SchemaError:
    """pydantic's first error as a ``SchemaError`` naming the key (``where.a.b``)."""
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if loc[:1] == ["strategy"] and len(loc) > 1 and loc[1] in _PARAMS:
        del loc[1]  # pydantic puts the union member's tag in the path; the key is strategy.<param>
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("name")  # the discriminator is what is wrong
    return SchemaError(first["msg"], field=".".join(p for p in (where, *loc) if p))


class _Parsed(BaseModel):
    model_config = _STRICT

    @classmethod
    def parse(cls, raw: Mapping[str, object], *, where: str = "config") -> Self:
        """Validate a received map; ``SchemaError`` names the first bad key under ``where``."""
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as exc:
            raise _first_error(exc, where) from None


class JobSpec(_Parsed):
    """A federated training job."""

    model: ModelRef = "builtin:2nn"
    dataset: DatasetName = "mnist"
    #: How the simulated fleet splits the data (devices of a real fleet bring their own).
    partition: PartitionName = "iid"
    strategy: SerializeAsAny[StrategyParams] = Field(default_factory=_default_strategy)
    rounds: int = Field(10, ge=1)
    #: Client fraction C: the share of healthy devices selected per round.
    fraction: float = Field(0.1, gt=0, le=1)
    min_clients: int = Field(2, ge=1)
    #: Share of the selected devices whose updates make a quorum.
    quorum: float = Field(0.8, gt=0, le=1)
    deadline_s: float = Field(120.0, gt=0)
    epochs: int = Field(1, ge=1)
    #: Local batch size B; 0 means the whole local dataset per step (the paper's B = infinity).
    batch_size: int = Field(10, ge=0)
    lr: float = Field(0.05, gt=0)
    seed: int = Field(0, ge=0)
    #: Ask devices to evaluate the trained model on their local validation split.
    evaluate_local: bool = True
    #: "central": the aggregator evaluates each new version on the dataset's test split.
    #: "federated": the selected devices evaluate the version they are given on their own
    #: held-out data (docs/protocol.md, "Federated evaluation"). Left out, it is central for a
    #: built-in model and federated for a model-store one (whose code the aggregator lacks).
    evaluation: EvaluationMode = "central"
    #: "declared": an update weighs its num_examples, which may not exceed the dataset size the
    #: device declared at enrolment (and the operator approved), capped at weight_cap × the median
    #: declared size of the round's selected devices. "equal": every update weighs 1.
    weighting: WeightingPolicy = "declared"
    #: k of the declared policy's cap, k × the round's median declared size.
    weight_cap: float = Field(3.0, ge=1)
    #: Quarantine: a device flagged in quarantine_k of its last quarantine_m scored rounds is
    #: suspended by the registry (0: never).
    quarantine_k: int = Field(0, ge=0)
    quarantine_m: int = Field(5, ge=1, validate_default=True)
    #: An update is flagged when its delta's norm exceeds flag_norm_k × the round's median norm,
    #: or its cosine to the round's aggregate delta is below flag_cosine, or the rule excluded it.
    flag_norm_k: float = Field(3.0, gt=1)
    flag_cosine: float = Field(0.0, ge=-1, le=1)
    #: Publication gate: a new version whose central test accuracy is more than this (a fraction,
    #: 0.02 = 2 points) below its parent's is not promoted, and the round closes "held" (None: off).
    gate_max_drop: float | None = Field(None, ge=0, le=1)

    @field_validator("quarantine_m")
    @classmethod
    def _k_of_m(cls, m: int, info: ValidationInfo) -> int:
        k = info.data.get("quarantine_k", 0)
        if k > m:
            raise ValueError(f"quarantine_k ({k}) cannot exceed quarantine_m ({m})")
        return m

    @field_validator("gate_max_drop")
    @classmethod
    def _gate_needs_central(cls, drop: float | None, info: ValidationInfo) -> float | None:
        if drop is not None and info.data.get("evaluation") != "central":
            raise ValueError("gate_max_drop needs central evaluation (evaluation = 'central')")
        return drop

    @model_validator(mode="before")
    @classmethod
    def _default_evaluation(cls, data: object) -> object:
        if isinstance(data, dict) and "evaluation" not in data:
            model = data.get("model", BUILTIN)
            store = isinstance(model, str) and not model.startswith(BUILTIN)
            return {**data, "evaluation": "federated" if store else "central"}
        return data

    @field_validator("strategy", mode="plain")
    @classmethod
    def _one_of_the_registered(cls, value: object) -> StrategyParams:
        if isinstance(value, StrategyParams) and _PARAMS.get(value.name) is type(value):
            return value
        # A ValidationError raised here keeps its locations, nested under ``strategy``.
        return _strategy_union().validate_python(value)

    def to_wire(self) -> dict[str, Setting]:
        """The ``JobCommand`` config for this job (``parse`` of it gives this spec back)."""
        return self.model_dump()

    @property
    def builtin(self) -> str | None:
        return builtin_model(self.model)


class TrainConfig(_Parsed):
    """One round's instructions to a device: ``RoundTask.config``, every key required.

    The keys are what a device's local solver understands. ``proximal_mu`` is the
    proximal coefficient of that solver (FedProx's μ; 0 is plain SGD); a strategy
    that needs a new kind of local step adds its key here and teaches devices it.
    """

    model: ModelRef
    dataset: DatasetName
    seed: int = Field(ge=0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=0)
    lr: float = Field(gt=0)
    proximal_mu: float = Field(ge=0)
    #: Evaluate the trained model on the device's local validation split.
    evaluate: bool
    #: Evaluate the received global model on the device's held-out data before anything else,
    #: and report it with the reply (``eval_*`` metrics): federated evaluation.
    evaluate_global: bool
    #: False in an evaluation-only round: the device evaluates and replies without weights.
    train: bool
    #: SCAFFOLD: correct each local gradient by ``c - c_i`` (the server's control variate comes with
    #: the model as the ``control`` group; ``c_i`` is the device's own, kept in its local state) and
    #: send ``c_i+ - c_i`` back as the ``control`` group.
    scaffold: bool = False
    #: Ditto's λ: above 0 the device also trains its personal model toward the received global one
    #: (``loss + λ/2 ||v - w_global||^2``), keeps it in its local state and reports its evaluation.
    ditto_lambda: float = Field(0.0, ge=0)
    #: FedPer: a regular expression (``re.fullmatch``) of tensor names that are personal: they are
    #: trained and kept on the device and never sent; empty for none.
    personal: str = ""

    def to_config(self) -> dict[str, Scalar]:
        return self.model_dump()
