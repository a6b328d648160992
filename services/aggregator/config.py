"""The aggregator's settings, from ``QFLARE_AGGREGATOR_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from qflare.config import BatchServiceSettings, Port
from services.aggregator.entrypoints import check_targets


class AggregatorSettings(BatchServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_AGGREGATOR_", extra="ignore")

    identity: str = "aggregator"
    metrics_port: Port = 9102
    #: Test examples the new global model is evaluated on (the first N of the test split); 0 disables.
    eval_examples: int = Field(default=10_000, ge=0)
    #: Central evaluation of model-store models: ``{"NAME@VERSION": "package.module:function"}``
    #: (JSON), the owners' entry points installed on this host (services/aggregator/entrypoints.py).
    evaluators: dict[str, str] = Field(default_factory=dict)

    @field_validator("evaluators")
    @classmethod
    def _targets(cls, value: dict[str, str]) -> dict[str, str]:
        return dict(check_targets(value))

    #: Longest sleep of the deadline timer; it otherwise wakes at the nearest round deadline.
    deadline_tick_s: float = Field(default=1.0, gt=0)
    #: A chunked update whose next chunk does not arrive within this time is dropped.
    chunk_timeout_s: float = Field(default=120.0, gt=0)
    #: Chunked updates reassembled at once (each holds its body in memory until complete).
    max_open_streams: int = Field(default=256, ge=1)
    #: A chunked update not complete this long after its first chunk is dropped, however busy.
    chunk_lifetime_s: float = Field(default=600.0, gt=0)
    #: Memory all chunked updates being reassembled may hold, and one device's share of it.
    max_stream_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    max_stream_bytes_per_sender: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: Room for an update body's own fields around its tensor bytes (names, shapes, metrics):
    #: a declared stream size must lie within this of the job's model layout.
    update_framing_bytes: int = Field(default=256 * 1024, ge=0)
    #: Memory a buffered round's updates may hold (tensor bytes) before further ones spill to files
    #: in a temporary directory under ``buffer_dir`` (the system's temporary directory if unset).
    #: A ``buffer_dir`` is this aggregator's alone: at start it removes what a crash left there.
    buffer_max_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    buffer_dir: Path | None = None
    #: The running sums, included updates, offsets and the audit events of the batches handled
    #: since the last checkpoint are committed together once this many updates (or rejected
    #: records) were handled, or ``checkpoint_interval_s`` after the first of them, and always
    #: before a round closes or a control record is applied. A crash redoes what came after the
    #: last checkpoint from Kafka; 1 commits every fetched batch.
    checkpoint_every_updates: int = Field(default=50, ge=1)
    checkpoint_interval_s: float = Field(default=5.0, gt=0)
