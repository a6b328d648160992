"""A job as the aggregator holds it: its spec, status, strategy and the state between rounds.

The spec is the one ``qflare.fl.JobSpec`` that an operator's ``JobCommand("start",
config)`` carries; a malformed one is refused at ``start``, naming the key. The
strategy object is built once per job, and every round and update of the job uses
it (it holds only the job's settings; what changes is in ``strategy_state``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from qflare.errors import Rejected
from qflare.fl import JobSpec, Strategy, build_strategy
from qflare.ml import ModelName
from qflare.reasons import Reason
from services.aggregator.models import Layout


def model_of(spec: JobSpec) -> ModelName:
    """The architecture of the job's model, or ``Rejected`` when this aggregator does not have it.

    Built-in models are always here. A model-store reference parses, but no model
    can be imported into the store yet, so such a job is refused.
    """
    builtin = spec.builtin
    if builtin is None:
        raise Rejected(
            Reason.UNKNOWN_MODEL,
            f"model {spec.model!r} is not in this aggregator's model store",
            field="body.config.model",
        )
    return cast(ModelName, builtin)


@dataclass(slots=True)
class Job:
    job_id: str
    config: JobSpec
    status: str
    strategy_state: bytes = b""
    #: The highest fencing token of the round tasks accepted for the job (the scheduler leader's).
    fencing_token: int = 0
    model: ModelName = field(init=False)
    layout: Layout = field(init=False)
    strategy: Strategy = field(init=False)

    def __post_init__(self) -> None:
        self.model = model_of(self.config)
        self.layout = Layout.of(self.model)
        self.strategy = build_strategy(self.config)
        if not self.strategy_state:
            self.strategy_state = self.strategy.initial_state().to_bytes()
