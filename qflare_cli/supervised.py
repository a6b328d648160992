"""The four services as `qflare demo` runs them: child processes of ``qflare.supervisor``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from qflare import localstack
from qflare.children import ServiceProcess
from qflare.kafka_acls import grant_now
from qflare.supervisor import Supervisor
from services.aggregator.config import AggregatorSettings
from services.audit.config import AuditSettings
from services.registry.config import RegistrySettings
from services.scheduler.config import SchedulerSettings

SERVICES = ("registry", "aggregator", "scheduler", "audit")
_SETTINGS = {
    "registry": RegistrySettings,
    "aggregator": AggregatorSettings,
    "scheduler": SchedulerSettings,
    "audit": AuditSettings,
}


def printer(console: Console) -> Callable[[str], None]:
    """How the supervisor's lines (a service died, restarted, was given up) reach the console."""

    def say(line: str) -> None:
        console.print(f"[yellow]{escape(line)}[/yellow]")

    return say


def start_services(
    supervisor: Supervisor, topic_prefix: str, log_dir: Path, announce: Callable[[str], None]
) -> None:
    """Start every service, each as its own principal, and wait until each one's /healthz says ready."""
    # The deployment's ACLs name its topics, so a prefix of its own needs its own grants.
    grant_now(
        prefix=topic_prefix,
        registry_group=RegistrySettings().group_id,
        scheduler_app=SchedulerSettings().app_id,
    )
    for name in SERVICES:
        announce(f"starting {name} …")
        # /metrics and /healthz on the port the service would use on its own (9101..9104 unless
        # set), or on another free one when some other process holds it.
        port = _SETTINGS[name]().metrics_port
        env = {"QFLARE_KAFKA_TOPIC_PREFIX": topic_prefix, **localstack.service_env(name)}
        supervisor.start(ServiceProcess(name, env, log_dir / f"{name}.log", port, own_session=True))


def metrics_ports(supervisor: Supervisor) -> list[int]:
    """Where each service (in ``SERVICES`` order) serves /metrics."""
    ports = []
    for name in SERVICES:
        child = supervisor.child(name)
        assert isinstance(child, ServiceProcess)
        ports.append(child.health_port)
    return ports
