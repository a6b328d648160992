"""Enrolment against the real registry: the token never travels, and a rotation needs a proof.

A rotate-key window alone no longer lets any self-signed enrolment take a device
over: the device's current key must sign the new key id, or the operator's
command must name it. An enrolment carries only the token's id and a MAC bound to
the device id and key id, so one seen on the topic enrols nothing else.
"""

from __future__ import annotations

import time
from pathlib import Path

from edge.runtime import enrolment
from qflare import operator
from qflare.crypto import generate_key
from qflare.identity import Identity
from qflare.kafka import KafkaSettings, make_producer, read_to_end, replay
from qflare.protocol import seal
from qflare.protocol.control import AuditEvent, RegistryCommand
from qflare.protocol.devices import Enrollment
from tests.integration.services.harness import Fleet, RegistryProcess, audit_events, fleet_state


def _reasons(events: list[AuditEvent], subject: str) -> list[str]:
    return [e.reason for e in events if e.event == "message.rejected" and e.subject == subject]


async def test_a_rotation_window_needs_the_current_keys_proof_or_the_named_key(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    tokens = await operator.issue_tokens(kafka, operator_id, 2, 600, {}, keys_dir=keys_dir)
    named_id, proven_id = f"nm-{unique}", f"pv-{unique}"
    fleet.add(named_id, tokens[0]).enrol()
    old = fleet.add(proven_id, tokens[1])
    old.enrol()
    await fleet_state(kafka, keys_dir, lambda v: named_id in v.devices and proven_id in v.devices)

    # 1. The operator names the new key: only that key may take over.
    wanted, thief = generate_key(), generate_key()
    expires = int((time.time() + 600) * 1000)
    command = RegistryCommand("rotate_key", named_id, (), expires, {}, wanted.key_id)
    assert await operator.send_command(kafka, operator_id, command, keys_dir=keys_dir)
    fleet.add(named_id, None, key=thief).enrol()  # self-signed, in the window, not the named key
    await audit_events(kafka, keys_dir, lambda ev: "rotation_unproven" in _reasons(ev, named_id))
    fleet.add(named_id, None, key=wanted).enrol()

    # 2. No key named: the enrolment must carry the current key's signature over the new key id.
    new = generate_key()
    assert await operator.send_command(
        kafka, operator_id, RegistryCommand("rotate_key", proven_id, (), expires, {}), keys_dir=keys_dir
    )
    intruder = fleet.add(proven_id, None, key=generate_key())
    intruder.enrol(previous=generate_key().signer())  # a proof, but not by the current key
    await audit_events(kafka, keys_dir, lambda ev: "rotation_unproven" in _reasons(ev, proven_id))
    fleet.add(proven_id, None, key=new).enrol(previous=old.signer)

    def rotated(v: operator.FleetView) -> bool:
        return v.devices[named_id].key_id == wanted.key_id and v.devices[proven_id].key_id == new.key_id

    view = await fleet_state(kafka, keys_dir, rotated)
    assert view.devices[named_id].status == view.devices[proven_id].status == "active"
    assert registry.alive


async def test_the_token_never_travels_and_a_seen_mac_enrols_no_other_key(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    (token,) = await operator.issue_tokens(kafka, operator_id, 1, 600, {}, keys_dir=keys_dir)
    device_id = f"dv-{unique}"
    device = fleet.add(device_id, token)
    # What an eavesdropper on the enrolment topic sees: the token id and the MAC. Copied into an
    # enrolment for its own key (sent first, so the token is still unused), they prove nothing.
    seen = enrolment(device_id, device.key.public_key, token, kafka.deployment_id)
    thief = generate_key()
    stolen = enrolment(device_id, thief.public_key, None, kafka.deployment_id)
    forged = seal(
        Enrollment(device_id, stolen.public_key, token_id=seen.token_id, token_mac=seen.token_mac),
        thief.signer(),
        kafka.topics.enrollments.channel,
        sender=device_id,
    )
    producer = make_producer(kafka)
    await producer.start()
    try:
        await producer.send_and_wait(fleet.topics.enrollments.name, forged, key=device_id.encode())
    finally:
        await producer.stop()
    await audit_events(kafka, keys_dir, lambda ev: "token_mac" in _reasons(ev, device_id))
    device.enrol()
    view = await fleet_state(kafka, keys_dir, lambda v: device_id in v.devices)
    assert view.devices[device_id].key_id == device.key.key_id

    # Neither the topic nor the device's spool holds the token.
    secret = token.encode()
    async with replay(kafka, fleet.topics.enrollments) as consumer:
        records = [r async for r in read_to_end(consumer, max_records=1000, timeout_s=10)]
    assert records and not any(secret in (r.value or b"") for r in records)
    spooled = [p for p in fleet.state_dir.iterdir() if p.name.startswith("fleet.spool")]
    assert spooled and not any(secret in p.read_bytes() for p in spooled)
