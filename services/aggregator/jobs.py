"""A job as the aggregator holds it: its spec, status, strategy and the state between rounds.

The spec is the one ``qflare.fl.JobSpec`` that an operator's ``JobCommand("start",
config)`` carries; a malformed one is refused at ``start``, naming the key. The
strategy object is built once per job, and every round and update of the job uses
it (it holds only the job's settings; what changes is in ``strategy_state``).

The model is a built-in (``builtin:cnn``) or one of the model store
(``<name>@<version>``), whose ``StoredModel`` the caller looks up and passes in:
its tensors then give the layout every update is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from numpy.typing import NDArray

from qflare.errors import Rejected
from qflare.fl import JobSpec, Strategy, UpdateSpec, build_strategy
from qflare.ml import ModelName, init_weights
from qflare.protocol.store import StoredModel
from qflare.reasons import Reason
from services.aggregator.models import Layout
from services.aggregator.quarantine import check_job


def layout_of(spec: JobSpec, stored: StoredModel | None) -> tuple[ModelName | None, Layout]:
    """The built-in architecture (None for a stored model) and the layout of the job's model.

    Raises ``Rejected`` (``unknown_model``) for a model this aggregator does not have.
    """
    builtin = spec.builtin
    if builtin is not None:
        name = cast(ModelName, builtin)
        return name, Layout.of(name)
    if stored is None or stored.ref != spec.model:
        raise Rejected(
            Reason.UNKNOWN_MODEL,
            f"model {spec.model!r} is not in this aggregator's model store",
            field="body.config.model",
        )
    return None, Layout.of_tensors(stored.tensors)


@dataclass(slots=True)
class Job:
    job_id: str
    config: JobSpec
    status: str
    strategy_state: bytes = b""
    #: The highest fencing token of the round tasks accepted for the job (the scheduler leader's).
    fencing_token: int = 0
    #: The job's model from the model store, when it names one.
    stored: StoredModel | None = None
    #: What the job's model versions record as their model: ``cnn`` or ``<name>@<version>``.
    model: str = field(init=False)
    #: The built-in architecture (evaluated centrally), or None for a stored model.
    builtin: ModelName | None = field(init=False)
    layout: Layout = field(init=False)
    strategy: Strategy = field(init=False)
    #: What every update of the job must carry (``Strategy.update_spec`` of the model's layout).
    spec: UpdateSpec = field(init=False)

    def __post_init__(self) -> None:
        self.builtin, self.layout = layout_of(self.config, self.stored)
        self.model = self.builtin or self.config.model
        self.strategy = build_strategy(self.config)
        check_job(self.config, self.strategy)  # quarantine needs a buffered strategy's scores
        self.spec = self.strategy.update_spec(self.layout.names, self.layout.shapes)
        if not self.strategy_state:
            self.strategy_state = self.strategy.initial_state().to_bytes()

    def initial_weights(self) -> list[NDArray[Any]]:
        """Version 0: the imported tensors exactly, or the built-in's seeded initialisation."""
        if self.stored is not None:
            return [t.array for t in self.stored.tensors]
        assert self.builtin is not None  # a job without a stored model has a built-in one
        return list(init_weights(self.builtin, self.config.seed))
