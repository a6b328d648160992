"""The aggregator's settings, from ``QFLARE_AGGREGATOR_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from qflare.config import BatchServiceSettings, Port


class AggregatorSettings(BatchServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_AGGREGATOR_", extra="ignore")

    identity: str = "aggregator"
    metrics_port: Port = 9102
    #: Test examples the new global model is evaluated on (the first N of the test split); 0 disables.
    eval_examples: int = Field(default=10_000, ge=0)
    #: Longest sleep of the deadline timer; it otherwise wakes at the nearest round deadline.
    deadline_tick_s: float = Field(default=1.0, gt=0)
    #: A chunked update whose next chunk does not arrive within this time is dropped.
    chunk_timeout_s: float = Field(default=120.0, gt=0)
    #: Chunked updates reassembled at once (each holds its body in memory until complete).
    max_open_streams: int = Field(default=256, ge=1)
