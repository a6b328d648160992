"""Services run as real processes for the integration tests: start, wait, kill -9, stop.

The process itself is ``qflare.supervisor.ServiceProcess``, ready when its /healthz
says so; the supervisor's restarts are left out, since these tests kill and restart
services themselves, at chosen points.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import ClassVar

from qflare.children import ServiceProcess, wait_ready
from qflare.identity import init_identities
from qflare.kafka_acls import grant_now
from qflare.localstack import service_env


class ManagedService:
    """Mixin for a ``python -m services.<service>`` process serving /metrics and /healthz.

    Subclasses declare ``log_path``, ``metrics_port``, ``proc`` and ``starts`` and build
    the process environment in ``env()``.
    """

    service: ClassVar[str]
    log_path: Path
    metrics_port: int
    proc: ServiceProcess | None
    starts: int
    #: The key root: the service's key is created in ``<keys_dir>/<service>/`` before its first start.
    keys_dir: Path

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def start(self, *, wait_s: float = 90) -> None:
        self.starts += 1
        # Services never create their own key: the harness does, as `qflare keys init` would.
        init_identities(self.keys_dir, [self.service])
        if self.proc is None:  # one for every start: the port stays the same across restarts
            self.proc = ServiceProcess(self.service, self.env(), self.log_path, self.metrics_port)
            self.metrics_port = self.proc.health_port
        env = self.env()
        # Each service logs in as its own principal, with the ACLs of this test's topic prefix.
        grant_now(
            prefix=env.get("QFLARE_KAFKA_TOPIC_PREFIX", ""),
            registry_group=env.get("QFLARE_REGISTRY_GROUP_ID", "qflare-registry"),
            scheduler_app=env.get("QFLARE_SCHEDULER_APP_ID", "qflare-scheduler"),
        )
        self.proc.env = {**env, **service_env(self.service)}
        self.proc.spawn()
        wait_ready(self.proc, wait_s)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL, then reaped

    def stop(self) -> None:
        """SIGTERM (the service stops its loop and closes its clients), SIGKILL after 30 s."""
        if self.proc is None or self.proc.proc is None:
            return
        self.proc.request_stop()
        try:
            self.proc.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode() is None


def scrape(port: int, name: str, **labels: str) -> float:
    """The sum of a service's /metrics samples of ``name`` that carry ``labels`` (0.0 when absent).

    Summed, because counters are pre-set for every label combination (e.g. one series per
    topic for each rejection reason), so the first matching line may be another topic's zero.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
