"""A real service under the supervisor: /healthz readiness, restart after kill -9, giving up."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.simulator.fleet import start_fleet
from qflare import health
from qflare.children import ServiceProcess, wait_ready
from qflare.errors import StackError
from qflare.identity import Identity, load_identity
from qflare.kafka import KafkaSettings
from qflare.supervisor import Supervisor, SupervisorSettings


def _until(cond: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s} s")
        time.sleep(0.1)


def _registry(kafka: KafkaSettings, keys_dir: Path, log: Path, **env: str) -> ServiceProcess:
    load_identity("registry", keys_dir, create=True)  # a service never makes its own key
    return ServiceProcess(
        "registry",
        {
            "QFLARE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "QFLARE_KAFKA_DEPLOYMENT_ID": kafka.deployment_id,
            "QFLARE_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "QFLARE_REGISTRY_KEYS_DIR": str(keys_dir),
            "QFLARE_REGISTRY_GROUP_ID": f"registry-{kafka.topic_prefix}",
            **env,
        },
        log,
    )


def test_a_killed_service_is_restarted_and_one_that_keeps_crashing_is_given_up(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, operator_id: Identity
) -> None:
    said: list[str] = []
    child = _registry(kafka, keys_dir, tmp_path / "registry.log")
    sup = Supervisor(SupervisorSettings(max_restarts=3, backoff_initial_s=0.1), say=said.append)
    sup.start(child)
    try:
        first = child.pid
        assert first is not None
        assert health.probe(child.health_port) == health.Health("registry", "ready", first)

        os.kill(first, signal.SIGKILL)
        _until(lambda: [e.kind for e in sup.events] == ["died", "restarted"], "a restart")
        assert child.pid != first and child.is_ready() and sup.restarts("registry") == 1
        died, back = sup.events
        assert died.text.startswith(f"registry killed by SIGKILL (pid {first}, up ")
        assert "restart 1, failure 1 of at most 3 in a row" in died.text
        assert back.text.startswith(f"registry restarted (pid {child.pid}), ready after ")
        sup.check()

        # From now on every start fails at once on a setting. The kill just after a restart is
        # failure 2 of the same run, the next two starts make 4 > 3 and it is given up.
        child.env["QFLARE_REGISTRY_BATCH_MAX_RECORDS"] = "0"
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        _until(lambda: sup.events[-1].kind == "gave_up", "giving up")
        assert [e.kind for e in sup.events[2:]] == ["died", "died", "gave_up"]
        assert "restart 2, failure 2 of at most 3" in sup.events[2].text
        assert "exited with code 1" in sup.events[-1].text
        assert "batch_max_records" in sup.events[-1].text  # the tail of its log says why
        with pytest.raises(StackError, match="4 failures in a row"):
            sup.check()
        assert said == [e.text for e in sup.events]
    finally:
        sup.stop()


def test_a_service_that_cannot_reach_its_database_is_alive_but_not_ready(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, operator_id: Identity
) -> None:
    child = _registry(
        kafka,
        keys_dir,
        tmp_path / "registry.log",
        QFLARE_REGISTRY_POSTGRES_DSN="postgresql://qflare@127.0.0.1:1/qflare",
    )
    child.spawn()
    try:
        # It retries from its checkpoint forever, and says so on /healthz rather than "ready".
        _until(
            lambda: (h := health.probe(child.health_port)) is not None and h.status == "restarting",
            "a restarting service",
        )
        assert child.returncode() is None and not child.is_ready()
        with pytest.raises(StackError, match="not ready after 2 s"):
            wait_ready(child, 2)
    finally:
        child.kill()
        child.close()


def test_a_killed_fleet_worker_is_restarted_and_stopping_the_fleet_is_no_death(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, operator_id: Identity
) -> None:
    said: list[str] = []
    fleet = start_fleet(
        ["dev-a", "dev-b"],
        ["token-a", "token-b"],
        kafka=kafka,
        processes=1,
        heartbeat_s=0.5,
        state_dir=tmp_path / "sim",
        keys_dir=keys_dir,
        seed=0,
        say=said.append,
    )
    (worker,) = fleet.workers
    try:
        first = worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _until(lambda: [e.kind for e in fleet.supervisor.events] == ["died", "restarted"], "a restart")
        assert worker.pid != first and worker.is_ready()
        assert said[0].startswith(f"sim-worker-0 killed by SIGKILL (pid {first}, up ")
        fleet.check()
    finally:
        fleet.stop()
    assert worker.returncode() is not None
    assert [e.kind for e in fleet.supervisor.events] == ["died", "restarted"]
