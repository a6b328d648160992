"""Poison records against the real registry: a NUL in a label or key does not stop it.

Before NUL was refused at decoding, an enrolment whose label held NUL reached
PostgreSQL, which refused the insert for good (``DataError``); the registry
exited, its offsets uncommitted, and met the same record after every restart.
"""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaProducer, TopicPartition

from edge.runtime import enrolment
from qflare import operator
from qflare.crypto import generate_key
from qflare.identity import Identity
from qflare.kafka import KafkaSettings, make_producer
from qflare.protocol import seal
from tests.integration.services.harness import Fleet, RegistryProcess, audit_events, delete_to_end
from tests.integration.services.test_registry import _fleet_state


async def test_nul_in_a_label_or_key_is_rejected_and_the_registry_goes_on(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    (token,) = await operator.issue_tokens(kafka, operator_id, 1, 600, {}, keys_dir=keys_dir)
    t = kafka.topics
    key = generate_key()
    poisoned = f"nul-{unique}"
    body = enrolment(poisoned, key.public_key, token, kafka.deployment_id, labels={"site": "lab\x00oops"})
    producer: AIOKafkaProducer = make_producer(kafka)
    await producer.start()
    try:
        record = seal(body, key.signer(), t.enrollments.channel, sender=poisoned)
        await producer.send_and_wait(t.enrollments.name, record, key=b"nul\x00" + poisoned.encode())
    finally:
        await producer.stop()

    # An honest device enrolling after it is served: the registry did not stop.
    honest = f"ok-{unique}"
    (token2,) = await operator.issue_tokens(kafka, operator_id, 1, 600, {}, keys_dir=keys_dir)
    fleet.add(honest, token2).enrol()
    view = await _fleet_state(kafka, keys_dir, 1, lambda v: honest in v.devices)
    assert view.devices[honest].status == "active" and poisoned not in view.devices

    events = await audit_events(
        kafka, keys_dir, lambda ev: any(e.source == "registry" and e.reason == "schema" for e in ev)
    )
    (refused,) = [e for e in events if e.source == "registry" and e.reason == "schema"]
    assert refused.detail["field"] == "body.labels.site"
    assert refused.subject is not None and "\x00" not in refused.subject
    assert registry.alive and registry.starts == 1


async def _send(kafka: KafkaSettings, topic: str, value: bytes) -> None:
    producer: AIOKafkaProducer = make_producer(kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def test_an_offset_gap_in_the_registry_group_is_audited(
    kafka: KafkaSettings, keys_dir: Path, registry: RegistryProcess
) -> None:
    beats = kafka.topics.heartbeats
    await _send(kafka, beats.name, b"\x93first, refused")  # the group commits its position past it
    await audit_events(kafka, keys_dir, lambda ev: any(e.source == "registry" for e in ev))
    registry.stop()

    for i in range(3):  # arrive while it is down, and are deleted before it reads them
        await _send(kafka, beats.name, b"\x93lost " + bytes([i]))
    ends = await delete_to_end(kafka, beats)

    registry.start()
    events = await audit_events(
        kafka, keys_dir, lambda ev: any(e.source == "registry" and e.event == "offset.gap" for e in ev)
    )
    (gap,) = [e for e in events if e.source == "registry" and e.event == "offset.gap"]
    assert gap.subject == beats.name and gap.severity == "critical" and gap.detail["skipped"] == 3
    partition = gap.detail["partition"]
    assert isinstance(partition, int)
    assert gap.detail["resumed_offset"] == ends[TopicPartition(beats.name, partition)]
    assert registry.alive
