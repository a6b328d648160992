"""The scheduler's settings, from ``QFLARE_SCHEDULER_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_SCHEDULER_", extra="ignore")

    redis_url: str = Field(
        default_factory=lambda: f"redis://127.0.0.1:{os.environ.get('QFLARE_REDIS_PORT', '16379')}/0"
    )
    keys_dir: Path = Path(".qflare/keys")
    identity: str = "scheduler"
    #: faust app id: the consumer group and the prefix of its changelog topics.
    app_id: str = "qflare-scheduler"
    #: faust's local state directory.
    data_dir: Path = Path(".qflare/scheduler")
    #: Leadership lease in Redis; a standby takes over this long after the leader dies.
    lease_s: float = Field(default=10.0, gt=1)
    #: How long after a round's deadline to wait for the aggregator before retrying the round.
    grace_s: float = Field(default=30.0, ge=0)
    tick_s: float = Field(default=1.0, gt=0)
    metrics_port: int = Field(default=9103, ge=0, le=65535)
