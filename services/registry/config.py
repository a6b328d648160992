"""The registry's settings, from ``QFLARE_REGISTRY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_REGISTRY_", extra="ignore")

    postgres_dsn: str = "postgresql://qflare@127.0.0.1:15432/qflare"
    redis_url: str = "redis://127.0.0.1:16379/0"
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
