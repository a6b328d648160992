"""Poison records against the real registry: a NUL in a label or key does not stop it.

Before NUL was refused at decoding, an enrolment whose label held NUL reached
PostgreSQL, which refused the insert for good (``DataError``); the registry
exited, its offsets uncommitted, and met the same record after every restart.
"""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaProducer

from edge.runtime import enrolment
from qflare import operator
from qflare.crypto import generate_key
from qflare.identity import Identity
from qflare.kafka import KafkaSettings, make_producer
from qflare.protocol import seal
from tests.integration.services.harness import Fleet, RegistryProcess, audit_events
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
