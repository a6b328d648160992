"""The registry's settings, from ``QFLARE_REGISTRY_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_REGISTRY_", extra="ignore")

    # Default to the local stack's servers, following its QFLARE_*_PORT settings.
    postgres_dsn: str = Field(
        default_factory=lambda: (
            f"postgresql://qflare@127.0.0.1:{os.environ.get('QFLARE_POSTGRES_PORT', '15432')}/qflare"
        )
    )
    redis_url: str = Field(
        default_factory=lambda: f"redis://127.0.0.1:{os.environ.get('QFLARE_REDIS_PORT', '16379')}/0"
    )
    keys_dir: Path = Path(".qflare/keys")
    #: The registry's own signing identity (``<keys_dir>/<identity>.key``).
    identity: str = "registry"
    group_id: str = "qflare-registry"
    #: A device that has not sent a heartbeat for this long is ``stale``...
    stale_after_s: float = Field(default=15.0, gt=0)
    #: ... and ``offline`` after this long (also the TTL of its liveness key).
    offline_after_s: float = Field(default=30.0, gt=0)
    sweep_interval_s: float = Field(default=1.0, gt=0)
    batch_max_records: int = Field(default=1000, ge=1)
    metrics_port: int = Field(default=9101, ge=0, le=65535)
