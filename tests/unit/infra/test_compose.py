"""docker-compose.yml describes the same infrastructure as the local stack, with health checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
REQUIRED = {"kafka", "postgres", "redis", "elasticsearch", "kibana", "jaeger"}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_every_infrastructure_service_is_present_with_a_healthcheck() -> None:
    services = _compose()["services"]
    assert set(services) >= REQUIRED
    for name in REQUIRED:
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"{name} has no health check"


def test_kafka_runs_kraft_with_raised_record_limit() -> None:
    env = _compose()["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= 16 * 1024 * 1024


def test_docker_compose_config_parses() -> None:
    docker = shutil.which("docker")
    assert docker is not None, "the docker CLI is missing; `make setup` expects it on this machine kind"
    version = subprocess.run([docker, "compose", "version"], capture_output=True)
    assert version.returncode == 0, "the compose plugin is missing; `make setup` builds it"
    result = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
