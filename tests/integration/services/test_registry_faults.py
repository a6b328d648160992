"""Bad input and faults: typed rejections with audit events and counters; crashes lose nothing."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devstack import launcher
from devstack.servers import Kafka
from devstack.settings import StackSettings
from edge.runtime import enrolment
from qflare import operator
from qflare.crypto import generate_key
from qflare.identity import Identity
from qflare.kafka import KafkaSettings, make_producer
from qflare.protocol import seal
from qflare.protocol.control import AuditEvent, RegistryCommand
from qflare.protocol.devices import Heartbeat
from tests.integration.services.harness import Fleet, RegistryProcess, audit_events, read_topic


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def registry(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, operator_id: Identity
) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(kafka, keys_dir, tmp_path / "registry.log", metrics_port=_free_port())
    proc.start()
    yield proc
    proc.stop()


async def _raw(kafka: KafkaSettings, topic: str, key: bytes, value: bytes) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_each_bad_input_is_rejected_audited_and_counted(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    t = fleet.topics
    short = await operator.issue_tokens(kafka, operator_id, 1, 1, {}, keys_dir=keys_dir)
    tokens = await operator.issue_tokens(kafka, operator_id, 3, 600, {}, keys_dir=keys_dir)
    await asyncio.sleep(1.2)  # the 1-second token is now expired

    good = fleet.add(f"ok-{unique}", tokens[0])
    good.enrol()
    revoked = fleet.add(f"rv-{unique}", tokens[1])
    revoked.enrol()
    await audit_events(kafka, keys_dir, lambda ev: sum(e.event == "device.enrolled" for e in ev) >= 2)
    assert await operator.send_command(
        kafka, operator_id, RegistryCommand("revoke", revoked.device_id, (), 0, {}), keys_dir=keys_dir
    )

    # 1. bad signature: flip a byte inside the signature of a valid enrolment
    forged_dev = fleet.add(f"bs-{unique}", tokens[2])
    record = bytearray(
        seal(
            enrolment(forged_dev.device_id, forged_dev.key.public_key, tokens[2], kafka.deployment_id),
            forged_dev.signer,
            fleet.topics.enrollments.channel,
            sender=forged_dev.device_id,
        )
    )
    record[-100] ^= 0x01
    await _raw(kafka, t.enrollments.name, forged_dev.device_id.encode(), bytes(record))
    # 2. reused token, 3. expired token
    fleet.add(f"ru-{unique}", tokens[0]).enrol()
    fleet.add(f"ex-{unique}", short[0]).enrol()
    # 4. a different key for an enrolled device, without an authorised rotation
    fleet.add(good.device_id, None, key=generate_key()).enrol()
    # 5. heartbeat from an unknown device, 6. from the revoked one
    stranger = fleet.add(f"un-{unique}", None)
    stranger.heartbeat()
    revoked.heartbeat()
    # 7. malformed bytes
    await _raw(kafka, t.heartbeats.name, b"junk", b"\x93\x01\x02")

    expected = {"signature", "token_reused", "token_expired", "key_mismatch", "unknown_key", "revoked"}

    def rejected(events: list[AuditEvent]) -> dict[str, str]:
        """subject -> reason of every rejection."""
        return {str(e.subject): e.reason for e in events if e.event == "message.rejected"}

    def complete(events: list[AuditEvent]) -> bool:
        found = rejected(events)
        return expected <= set(found.values()) and "junk" in found

    found = rejected(await audit_events(kafka, keys_dir, complete))
    # Malformed bytes are refused by the envelope parser with its own typed reason.
    assert found["junk"] in {"schema", "limit"}
    on_heartbeats = {"unknown_key", "revoked", found["junk"]}
    for reason in [*expected, found["junk"]]:
        topic = t.heartbeats.name if reason in on_heartbeats else t.enrollments.name
        assert registry.metric("qflare_rejected_messages_total", reason=reason, topic=topic) >= 1, reason
    # The registry kept running and still accepts valid work.
    assert registry.alive
    (late,) = await operator.issue_tokens(kafka, operator_id, 1, 600, {}, keys_dir=keys_dir)
    fleet.add(f"late-{unique}", late).enrol()
    view = await _until(kafka, keys_dir, lambda v: f"late-{unique}" in v.devices)
    assert view.devices[good.device_id].key_id == good.key.key_id  # pinned key unchanged
    assert f"bs-{unique}" not in view.devices and f"ru-{unique}" not in view.devices


async def _until(
    kafka: KafkaSettings, keys_dir: Path, check: object, timeout_s: float = 60
) -> operator.FleetView:
    deadline = time.monotonic() + timeout_s
    while True:
        view = await operator.read_fleet(kafka, keys_dir)
        if check(view):  # type: ignore[operator]
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"registry state not reached; have {sorted(view.devices)[:5]}…")
        await asyncio.sleep(0.5)


async def test_registry_kill9_mid_enrolment_loses_and_duplicates_nothing(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
    stack: StackSettings,
) -> None:
    count = 150
    tokens = await operator.issue_tokens(kafka, operator_id, count, 600, {}, keys_dir=keys_dir)
    ids = [f"k9-{unique}-{i:03d}" for i in range(count)]
    for device_id, token in zip(ids, tokens, strict=True):
        fleet.add(device_id, token).enrol()
    # Kill as soon as some, but not all, enrolments are in PostgreSQL.
    async with await psycopg.AsyncConnection.connect(stack.postgres_dsn, autocommit=True) as conn:
        for _ in range(400):
            cur = await conn.execute(
                "SELECT count(*) FROM registry.devices WHERE device_id LIKE %s", (f"k9-{unique}-%",)
            )
            done = (await cur.fetchone() or (0,))[0]
            if done >= 10:
                break
            await asyncio.sleep(0.02)
        registry.kill9()
        assert done < count, "enrolment finished before the kill; the test proves nothing"
        registry.start()
        view = await _until(kafka, keys_dir, lambda v: all(d in v.devices for d in ids), timeout_s=120)
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT device_id) FROM registry.devices WHERE device_id LIKE %s",
            (f"k9-{unique}-%",),
        )
        assert await cur.fetchone() == (count, count)
        cur = await conn.execute(
            "SELECT count(*) FROM registry.tokens WHERE used_by LIKE %s", (f"k9-{unique}-%",)
        )
        assert await cur.fetchone() == (count,)
    assert all(view.devices[d].status == "active" for d in ids)
    # Exactly one "enrolled" audit record per device, even across the crash.
    events = await audit_events(
        kafka, keys_dir, lambda ev: sum(e.event == "device.enrolled" for e in ev) >= count
    )
    await asyncio.sleep(1)
    events = await audit_events(
        kafka, keys_dir, lambda ev: sum(e.event == "device.enrolled" for e in ev) >= count
    )
    enrolled = [str(e.subject) for e in events if e.event == "device.enrolled"]
    assert sorted(set(enrolled)) == sorted(ids)


async def test_broker_restart_devices_reconnect_and_spooled_heartbeats_arrive(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
    stack: StackSettings,
) -> None:
    (token,) = await operator.issue_tokens(kafka, operator_id, 1, 600, {}, keys_dir=keys_dir)
    device = fleet.add(f"br-{unique}", token)
    fleet.run(device.device_id)
    t = fleet.topics
    broker = Kafka(stack)
    await asyncio.sleep(2)
    broker.stop()
    try:
        await asyncio.sleep(4)  # the device keeps heartbeating into its spool
        assert len(fleet.spool) > 0
        seq_during_outage = device.seq
    finally:
        broker.start()
        await launcher.wait_healthy(broker, time.monotonic() + 120)
    beats = await read_topic(
        kafka,
        t.heartbeats,
        fleet.devices_keyring(),
        timeout_s=120,
        until=lambda got: any(isinstance(b, Heartbeat) and b.seq >= seq_during_outage for b in got),
    )
    seqs = sorted(b.seq for b in beats if isinstance(b, Heartbeat))
    # Every heartbeat made while the broker was down arrived, in order, none lost.
    assert seqs[:seq_during_outage] == list(range(1, seq_during_outage + 1))
    # The spool drained once the broker was back (the link retried; the device never exited).
    for _ in range(100):
        if len(fleet.spool) == 0:
            break
        await asyncio.sleep(0.1)
    assert len(fleet.spool) == 0
    # And the registry, which lost the broker too, recovered and sees the device online.
    await _until(kafka, keys_dir, lambda v: v.health.get(device.device_id) == "online", timeout_s=120)
    assert registry.alive
