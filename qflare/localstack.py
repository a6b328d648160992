"""The local development stack's generated secrets, as clients find them by default.

``qflare stack up`` writes a CA, a broker certificate and one password per
principal under ``<runtime dir>/auth``. Client settings (Kafka, PostgreSQL,
Redis) default to these when no ``QFLARE_*`` credential is set, the same way
their addresses follow ``QFLARE_KAFKA_PORT`` and friends: a fresh checkout
talks to its own authenticated stack with no configuration at all. Without the
directory (a stack from before authentication, or none) nothing is filled in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: The principals of every server: one per service, one for all devices, one operator.
KAFKA_PRINCIPALS = ("admin", "registry", "scheduler", "aggregator", "audit", "device")
#: PostgreSQL login roles of the services that own a schema (the admin role migrates).
POSTGRES_ROLES = ("registry", "aggregator", "audit")
#: Redis ACL users of the services that use Redis.
REDIS_USERS = ("registry", "scheduler")


def elasticsearch_url() -> str:
    """The local stack's Elasticsearch, on the port it was started with (``QFLARE_ELASTICSEARCH_PORT``)."""
    return f"http://127.0.0.1:{os.environ.get('QFLARE_ELASTICSEARCH_PORT', '19200')}"


def runtime_dir() -> Path:
    return Path(os.environ.get("QFLARE_RUNTIME_DIR", ".qflare")).resolve()


def auth_dir(runtime: Path | None = None) -> Path:
    return (runtime or runtime_dir()) / "auth"


def secrets_file(runtime: Path | None = None) -> Path:
    return auth_dir(runtime) / "secrets.json"


def ca_file(runtime: Path | None = None) -> Path:
    return auth_dir(runtime) / "ca.pem"


def secrets(runtime: Path | None = None) -> dict[str, dict[str, str]] | None:
    """``{server: {user: password}}`` of the local stack, or None when it has none."""
    try:
        text = secrets_file(runtime).read_text()
    except (FileNotFoundError, PermissionError):
        return None
    data: dict[str, dict[str, str]] = json.loads(text)
    return data


def password(server: str, user: str) -> str | None:
    found = secrets()
    return None if found is None else found.get(server, {}).get(user)


def postgres_user_dsn(user: str) -> str:
    """A DSN of the local PostgreSQL as ``user`` (``qflare`` is the cluster's admin)."""
    port = os.environ.get("QFLARE_POSTGRES_PORT", "15432")
    secret = password("postgres", user)
    # A stack without generated secrets has one role, trusted from loopback.
    auth = "qflare" if secret is None else f"{user if user == 'qflare' else 'qflare_' + user}:{secret}"
    return f"postgresql://{auth}@127.0.0.1:{port}/qflare"


def redis_user_url(user: str | None) -> str:
    """A URL of the local Redis as ``user`` (None: the admin user)."""
    port = os.environ.get("QFLARE_REDIS_PORT", "16379")
    name = user or "admin"
    secret = password("redis", name)
    auth = "" if secret is None else f"{name}:{secret}@"
    return f"redis://{auth}127.0.0.1:{port}/0"


def service_env(service: str) -> dict[str, str]:
    """Environment that logs ``service`` in with its own principal on every server of the local stack.

    Empty without generated secrets (the service then uses the defaults, as before).
    """
    found = secrets()
    if found is None:
        return {}
    env = {"QFLARE_KAFKA_USERNAME": service, "QFLARE_KAFKA_PASSWORD": found["kafka"][service]}
    prefix = f"QFLARE_{service.upper()}_"
    if service in POSTGRES_ROLES:
        env[prefix + "POSTGRES_DSN"] = postgres_user_dsn(service)
    if service in REDIS_USERS:
        env[prefix + "REDIS_URL"] = redis_user_url(service)
    return env
