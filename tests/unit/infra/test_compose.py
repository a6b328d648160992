"""docker-compose.yml describes the same infrastructure as the local stack, with health checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devstack.auth import compose_env

ROOT = Path(__file__).resolve().parents[3]
REQUIRED = {"kafka", "postgres", "redis", "elasticsearch", "kibana", "jaeger"}
QFLARE = {"registry": 9101, "aggregator": 9102, "scheduler": 9103, "audit": 9104}
OBSERVABILITY = {"prometheus", "grafana"}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_every_long_running_service_is_present_with_a_healthcheck() -> None:
    services = _compose()["services"]
    assert set(services) >= REQUIRED | set(QFLARE) | OBSERVABILITY | {"fleet", "kibana-import", "filebeat"}
    for name in REQUIRED | set(QFLARE) | OBSERVABILITY:
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
        env=_secrets(),
    )
    assert result.returncode == 0, result.stderr


def _secrets() -> dict[str, str]:
    """The environment with a fresh set of the passwords compose requires (its ``.env``)."""
    return {**os.environ, **compose_env()}


def test_compose_refuses_to_start_without_passwords() -> None:
    docker = shutil.which("docker")
    assert docker is not None
    env = {k: v for k, v in os.environ.items() if not k.endswith("_PASSWORD")}
    result = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0
    assert "PASSWORD" in result.stderr


def _config() -> dict[str, Any]:
    """The compose file as docker compose resolves it (anchors, merges and ${VAR} defaults applied)."""
    docker = shutil.which("docker")
    assert docker is not None, (
        "the docker CLI is missing; this machine kind ships it and `make setup` adds compose"
    )
    result = subprocess.run(
        [
            docker,
            "compose",
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--profile",
            "filebeat",
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=_secrets(),
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_qflare_services_run_from_the_image_against_compose_hostnames() -> None:
    services = _config()["services"]
    for name, port in QFLARE.items():
        svc = services[name]
        assert svc["build"]["dockerfile"] == "infra/docker/Dockerfile"
        assert svc["command"] == ["python", "-m", f"services.{name}"]
        env = _env(svc)
        assert env["QFLARE_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["QFLARE_METRICS_ADDR"] == "0.0.0.0"
        assert env[f"QFLARE_{name.upper()}_METRICS_PORT"] == str(port)
        mounts = {v["target"]: v for v in svc["volumes"]}
        assert mounts[f"/app/.qflare/keys/{name}"]["source"] == f"key-{name}"
        assert mounts["/app/.qflare/keys/trusted"]["read_only"] is True
        # No other identity's private key is mounted.
        assert not [
            v for v in svc["volumes"] if v["source"].startswith("key-") and v["source"] != f"key-{name}"
        ]
        assert str(port) in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"]["keys"]["condition"] == "service_completed_successfully"
    assert _env(services["registry"])["QFLARE_REGISTRY_POSTGRES_DSN"].endswith("@postgres:5432/qflare")
    assert _env(services["registry"])["QFLARE_REGISTRY_REDIS_URL"].startswith("redis://registry:")
    assert _env(services["aggregator"])["QFLARE_AGGREGATOR_POSTGRES_DSN"].endswith("@postgres:5432/qflare")
    assert _env(services["scheduler"])["QFLARE_SCHEDULER_REDIS_URL"].startswith("redis://scheduler:")
    assert _env(services["audit"])["QFLARE_AUDIT_ELASTICSEARCH_URL"].endswith("@elasticsearch:9200")
    for name in QFLARE:
        env = _env(services[name])
        assert env["QFLARE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["QFLARE_KAFKA_USERNAME"] == name
        assert env["QFLARE_KAFKA_PASSWORD"]


def test_environment_names_match_the_settings_classes() -> None:
    from services.aggregator.config import AggregatorSettings
    from services.audit.config import AuditSettings
    from services.registry.config import RegistrySettings
    from services.scheduler.config import SchedulerSettings

    classes: dict[str, Any] = {
        "registry": RegistrySettings,
        "aggregator": AggregatorSettings,
        "scheduler": SchedulerSettings,
    }
    classes["audit"] = AuditSettings
    services = _config()["services"]
    for name, settings in classes.items():
        prefix = f"QFLARE_{name.upper()}_"
        for key in _env(services[name]):
            if key.startswith(prefix):
                assert key[len(prefix) :].lower() in settings.model_fields, key


def test_the_fleet_simulates_devices_against_the_registry() -> None:
    fleet = _config()["services"]["fleet"]
    assert fleet["command"][:2] == ["qflare", "simulate"]
    assert int(fleet["command"][fleet["command"].index("--devices") + 1]) >= 1
    assert fleet["depends_on"]["registry"]["condition"] == "service_healthy"


def test_observability_mounts_its_configuration() -> None:
    services = _config()["services"]
    prom = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert prom["/etc/prometheus/prometheus.yml"].endswith("infra/prometheus/prometheus.yml")
    assert prom["/etc/prometheus/alerts.yml"].endswith("infra/prometheus/alerts.yml")
    grafana = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
    assert grafana["/etc/grafana/provisioning/datasources"].endswith("infra/grafana/provisioning/datasources")
    assert grafana["/etc/grafana/provisioning/dashboards"].endswith("infra/grafana/provisioning/dashboards")
    assert grafana["/var/lib/grafana/dashboards"].endswith("infra/grafana/dashboards")
    for source in [*prom.values(), *grafana.values()]:
        assert source == "promdata" or Path(source).exists(), source


def test_kibana_import_posts_the_saved_objects_once_kibana_is_healthy() -> None:
    job = _config()["services"]["kibana-import"]
    assert job["depends_on"]["kibana"]["condition"] == "service_healthy"
    command = " ".join(job["command"])
    assert "http://kibana:5601/api/saved_objects/_import" in command
    assert "kbn-xsrf: true" in command
    assert "file=@/kibana/qflare.ndjson" in command
    mount = next(v for v in job["volumes"] if v["target"] == "/kibana")
    assert (Path(mount["source"]) / "qflare.ndjson").exists()


def test_filebeat_is_an_opt_in_profile() -> None:
    assert _compose()["services"]["filebeat"]["profiles"] == ["filebeat"]
    config = yaml.safe_load((ROOT / "infra" / "filebeat" / "filebeat.yml").read_text())
    assert config["output.elasticsearch"]["index"].startswith("qflare-logs-")
    assert config["setup.template.pattern"] == "qflare-logs-*"


def test_every_published_port_is_bound_to_loopback() -> None:
    for name, svc in _config()["services"].items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)


def test_the_servers_require_authentication() -> None:
    services = _config()["services"]
    kafka = _env(services["kafka"])
    assert "PLAINTEXT" not in kafka["KAFKA_LISTENERS"].split(",")[0]
    assert kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].startswith("SASL_SSL:SASL_SSL")
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    postgres = _env(services["postgres"])
    assert postgres["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert "trust" not in postgres["POSTGRES_INITDB_ARGS"]
    redis = " ".join(services["redis"]["entrypoint"])
    assert "user default off" in redis and "--aclfile" in redis
    assert _env(services["elasticsearch"])["xpack.security.enabled"] == "true"
    grafana = _env(services["grafana"])
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"]


def test_devices_mount_no_private_key() -> None:
    fleet = _config()["services"]["fleet"]
    assert not [v for v in fleet["volumes"] if v["source"].startswith("key-")]
    assert _env(fleet)["QFLARE_KAFKA_USERNAME"] == "device"
