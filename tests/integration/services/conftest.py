"""Fixtures: the services as processes, a control plane and a device fleet, each test with its own topics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from qflare.identity import Identity, load_identity
from qflare.kafka import KafkaSettings
from tests.integration.services.aggregator_harness import AggregatorProcess, ControlPlane
from tests.integration.services.audit_harness import AuditProcess, Publisher, drop_indices
from tests.integration.services.harness import Fleet, RegistryProcess


@pytest.fixture
def kafka(unique: str, monkeypatch: pytest.MonkeyPatch) -> KafkaSettings:
    # A deployment id of its own too: services must sign and verify with the one they are given.
    # Tools the test runs as subprocesses (`qflare audit verify`) read it from the environment.
    deployment = f"test-{unique}"
    monkeypatch.setenv("QFLARE_KAFKA_DEPLOYMENT_ID", deployment)
    return KafkaSettings(topic_prefix=f"t{unique}.", deployment_id=deployment)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def operator_id(keys_dir: Path) -> Identity:
    return load_identity("operator", keys_dir, create=True)


@pytest.fixture
def registry(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, operator_id: Identity
) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(kafka, keys_dir, tmp_path / "registry.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def fleet(kafka: KafkaSettings, tmp_path: Path) -> AsyncIterator[Fleet]:
    made = Fleet(kafka, tmp_path / "fleet")
    await made.link.start()
    yield made
    await made.close()


@pytest.fixture
def aggregator(kafka: KafkaSettings, keys_dir: Path, tmp_path: Path) -> Iterator[AggregatorProcess]:
    proc = AggregatorProcess(kafka, keys_dir, tmp_path / "aggregator.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def audit(kafka: KafkaSettings, keys_dir: Path, tmp_path: Path) -> Iterator[AuditProcess]:
    proc = AuditProcess(kafka, keys_dir, tmp_path / "audit.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def plane(kafka: KafkaSettings, keys_dir: Path) -> AsyncIterator[ControlPlane]:
    """Signs as the operator, scheduler and registry would, and as devices."""
    made = ControlPlane(kafka, keys_dir)
    await made.start()
    yield made
    await made.stop()
    await drop_indices(kafka.topic_prefix)  # the audit service's, where one ran


@pytest.fixture
async def publisher(kafka: KafkaSettings, keys_dir: Path) -> AsyncIterator[Publisher]:
    """Publishes signed records of any sender, for the audit service to read."""
    made = Publisher(kafka, keys_dir)
    await made.start()
    yield made
    await made.stop()
    await drop_indices(kafka.topic_prefix)
