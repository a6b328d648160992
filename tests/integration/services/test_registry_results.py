"""The registry's signed enrolment results, read by the device, against the real registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.enrolment import EnrollmentRefused, EnrollmentResults
from edge.runtime import enrolment
from qflare import operator
from qflare.crypto import KeyFile, generate_key
from qflare.identity import Identity, TrustedKeys
from qflare.kafka import KafkaSettings, make_producer
from qflare.protocol import seal
from qflare.protocol.envelope import new_message_id
from tests.integration.services.harness import Fleet, RegistryProcess

WAIT_S = 60


@pytest.fixture
async def results(kafka: KafkaSettings, keys_dir: Path, fleet: Fleet) -> AsyncIterator[EnrollmentResults]:
    # Started before any enrolment is sent, as a device must.
    made = EnrollmentResults(kafka, fleet.topics, TrustedKeys(keys_dir))
    await made.start()
    yield made
    await made.stop()


async def _refused(
    fleet: Fleet, results: EnrollmentResults, device_id: str, token: str, key: KeyFile | None = None
) -> EnrollmentRefused:
    device = fleet.add(device_id, token, key=key)
    device.enrol()
    with pytest.raises(EnrollmentRefused) as caught:
        await device.wait_enrolled(results, WAIT_S)
    assert device.enrollment is not None and device.enrollment.status == "rejected"
    return caught.value


async def test_each_enrolment_gets_a_signed_result_with_its_reason(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    results: EnrollmentResults,
    unique: str,
) -> None:
    t1, t2, t3 = await operator.issue_tokens(kafka, operator_id, 3, 600, {}, keys_dir=keys_dir)
    first = f"dev-{unique}-a"

    # Accepted: a new device with a valid token.
    device = fleet.add(first, t1)
    device.enrol()
    accepted = await device.wait_enrolled(results, WAIT_S)
    assert (accepted.status, accepted.reason, accepted.field) == ("accepted", "new", None)
    assert accepted.device_id == first and accepted.enrollment_id == device.enrollment_id
    assert accepted.key_id == device.key.key_id

    # Rejected: another device presents the token already used.
    refused = await _refused(fleet, results, f"dev-{unique}-b", t1)
    assert (refused.registry_reason, refused.field) == ("token_reused", "body.token_id")
    assert t1 not in str(refused)  # every device may read results: tokens are never echoed

    # The existing id again, same key, with a fresh token: accepted, nothing changed, token unused.
    again = fleet.add(first, t2, key=device.key)
    again.enrol()
    unchanged = await again.wait_enrolled(results, WAIT_S)
    assert (unchanged.status, unchanged.reason) == ("accepted", "unchanged")
    assert unchanged.enrollment_id == again.enrollment_id != accepted.enrollment_id
    other = fleet.add(f"dev-{unique}-c", t2)
    other.enrol()
    assert (await other.wait_enrolled(results, WAIT_S)).reason == "new"  # t2 was still unused

    # The existing id with a new key (and a fresh token): the pinned key refuses it.
    refused = await _refused(fleet, results, first, t3, key=generate_key())
    assert (refused.registry_reason, refused.field) == ("key_mismatch", "public_key")
    assert refused.result.key_id != device.key.key_id


async def test_stale_enrolment_is_answered_and_unverified_records_are_not(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    results: EnrollmentResults,
    unique: str,
) -> None:
    (token,) = await operator.issue_tokens(kafka, operator_id, 1, 600, {}, keys_dir=keys_dir)
    device_id = f"dev-{unique}-clock"
    key = generate_key()
    body = enrolment(device_id, key.public_key, token, kafka.deployment_id)
    producer = make_producer(kafka)
    await producer.start()
    try:
        # A device whose clock is 20 minutes slow: signed, so it is told why (step 10).
        stale_id = new_message_id()
        ts_ms = int(time.time() * 1000) - 20 * 60_000
        channel = fleet.topics.enrollments.channel
        stale = seal(body, key.signer(), channel, sender=device_id, ts_ms=ts_ms, msg_id=stale_id)
        # A copy whose signature is broken: its claims are unauthenticated, so no result.
        forged_id = new_message_id()
        forged = bytearray(seal(body, key.signer(), channel, sender=device_id, msg_id=forged_id))
        forged[-1] ^= 0x01
        topic = fleet.topics.enrollments.name
        for record in (stale, bytes(forged)):
            await producer.send_and_wait(topic, record, key=device_id.encode())
        with pytest.raises(EnrollmentRefused) as caught:
            await results.wait(device_id, stale_id, WAIT_S)
        assert (caught.value.registry_reason, caught.value.field) == ("stale", "ts_ms")

        # A valid enrolment after both, on the same partition: its result comes after any
        # result of the forged one would have, so by now that one would have been seen.
        good_id = new_message_id()
        good = seal(body, key.signer(), channel, sender=device_id, msg_id=good_id)
        await producer.send_and_wait(topic, good, key=device_id.encode())
        result = await results.wait(device_id, good_id, WAIT_S)
        assert (result.status, result.reason) == ("accepted", "new")
        assert results.seen(device_id, forged_id) is None
    finally:
        await producer.stop()


async def test_a_refused_device_stops_with_the_registrys_reason(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    results: EnrollmentResults,
    unique: str,
) -> None:
    (token,) = await operator.issue_tokens(kafka, operator_id, 1, 600, {}, keys_dir=keys_dir)
    accepted = fleet.add(f"dev-{unique}-ok", token)
    accepted.enrol()
    await accepted.wait_enrolled(results, WAIT_S)
    reused = fleet.add(f"dev-{unique}-late", token)
    task = asyncio.create_task(reused.run(results=results))
    # The runtime enrols, reads the refusal, and ends its heartbeat loop by itself.
    await asyncio.wait_for(task, timeout=WAIT_S)
    assert not reused.alive
    assert reused.enrollment is not None
    assert (reused.enrollment.status, reused.enrollment.reason) == ("rejected", "token_reused")
