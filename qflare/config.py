"""Settings every service shares, read from ``QFLARE_*`` environment variables.

Each service's settings class extends one of these and sets its own prefix
(``QFLARE_REGISTRY_``, ``QFLARE_AGGREGATOR_``…), so a variable configures
exactly one service and two services on one machine never read each other's.
The defaults point at the local development stack and follow its
``QFLARE_POSTGRES_PORT`` and ``QFLARE_REDIS_PORT`` when those are set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from qflare import localstack
from qflare.identity import DEFAULT_KEYS_DIR

#: A TCP port; 0 lets the operating system choose (tests run services side by side that way).
Port = Annotated[int, Field(ge=0, le=65535)]


def local_postgres_dsn() -> str:
    """The local stack's admin role (with its generated password when the stack has one)."""
    return localstack.postgres_user_dsn("qflare")


def local_redis_url() -> str:
    """The local stack's Redis as its admin user (when the stack has generated users)."""
    return localstack.redis_user_url(None)


class ServiceSettings(BaseSettings):
    """Who the service is and where it keeps its keys; a subclass names its identity and port."""

    model_config = SettingsConfigDict(env_prefix="QFLARE_", extra="ignore")

    #: Own key ``<keys_dir>/<identity>/<identity>.key`` (never created here: ``qflare keys init``);
    #: trusted public keys in ``<keys_dir>/trusted``.
    keys_dir: Path = DEFAULT_KEYS_DIR
    #: The service's signing identity: the ``sender`` of everything it publishes.
    identity: str
    #: Where Prometheus scrapes ``/metrics``.
    metrics_port: Port
    #: A command (job or registry) older than this is refused: orders are for now, not for later.
    command_max_age_s: float = Field(default=900.0, gt=0)
    #: Poison-record policy (``qflare.poison.Tally``): per topic, sender and reason, the first
    #: ``rejection_reports_per_window`` rejections of each window are audited one by one; the
    #: rest are counted and audited as one summary when the window ends.
    rejection_window_s: float = Field(default=60.0, gt=0)
    rejection_reports_per_window: int = Field(default=5, ge=1)


class BatchServiceSettings(ServiceSettings):
    """A service that consumes in batches and commits each batch to its PostgreSQL schema."""

    postgres_dsn: str = Field(default_factory=local_postgres_dsn)
    #: Records per consumer fetch; each fetch is committed as one PostgreSQL transaction.
    batch_max_records: int = Field(default=500, ge=1)
