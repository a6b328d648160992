"""Where the local stack lives and which ports it uses, from ``QFLARE_*`` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from qflare import localstack

#: Downloads (Kafka jars, the Elasticsearch distribution) and the shared venv live
#: outside any clone, so a fresh clone reuses them instead of fetching again. It
#: must be readable by the unprivileged service user, hence not under /root.
DEFAULT_CACHE_DIR = Path("/var/cache/qflare")


class StackSettings(BaseSettings):
    """Ports, paths and versions of the no-Docker development stack."""

    model_config = SettingsConfigDict(env_prefix="QFLARE_", extra="ignore")

    #: Runtime data (databases, logs, pid files) of this checkout; git-ignored.
    runtime_dir: Path = Path(".qflare")
    cache_dir: Path = DEFAULT_CACHE_DIR
    #: PostgreSQL and Elasticsearch refuse to run as root; both run as this user.
    service_user: str = "qflare"

    kafka_version: str = "4.4.0"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap_mb: int = 768
    #: Broker-wide record limit; the protocol chunks anything larger.
    kafka_message_max_bytes: int = 16 * 1024 * 1024 + 64 * 1024

    postgres_port: int = 15432
    postgres_db: str = "qflare"
    postgres_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")

    redis_port: int = 16379

    elasticsearch_version: str = "8.19.3"
    elasticsearch_port: int = 19200
    elasticsearch_transport_port: int = 19300
    elasticsearch_heap_mb: int = 512

    #: Jaeger v2, built from its Go module (infra/local/jaeger pins the matching v1.x tag).
    jaeger_version: str = "2.13.0"
    #: The query UI and HTTP API (`/api/traces`); its gRPC API listens on `jaeger_grpc_port`.
    jaeger_port: int = 16686
    jaeger_grpc_port: int = 16685
    jaeger_otlp_grpc_port: int = 4317
    jaeger_otlp_http_port: int = 4318
    jaeger_max_traces: int = 100_000

    #: How long `stack up` waits for every server to pass its health check.
    start_timeout_s: float = 180.0
    stop_timeout_s: float = 30.0

    @property
    def runtime(self) -> Path:
        return self.runtime_dir.resolve()

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def _secret(self, server: str, user: str) -> str:
        """``user:password`` (or ``user``) from the stack's generated secrets."""
        found = (localstack.secrets(self.runtime) or {}).get(server, {}).get(user)
        return user if found is None else f"{user}:{found}"

    @property
    def postgres_dsn(self) -> str:
        """The admin role, which owns every schema (services log in with their own roles)."""
        login = self._secret("postgres", "qflare").replace("qflare", self.service_user, 1)
        return f"postgresql://{login}@127.0.0.1:{self.postgres_port}/{self.postgres_db}"

    @property
    def redis_url(self) -> str:
        login = self._secret("redis", "admin")
        auth = f"{login}@" if ":" in login else ""
        return f"redis://{auth}127.0.0.1:{self.redis_port}/0"

    @property
    def jaeger_url(self) -> str:
        return f"http://127.0.0.1:{self.jaeger_port}"

    @property
    def otlp_endpoint(self) -> str:
        return f"127.0.0.1:{self.jaeger_otlp_grpc_port}"

    @property
    def elasticsearch_url(self) -> str:
        return f"http://127.0.0.1:{self.elasticsearch_port}"
