"""Device state changes only through signed, newer records, against the real aggregator and registry.

A bare tombstone or a re-published old record on the device topic must change
no key, in a consumer that follows the topic and in one that rebuilds from it
after a restart; the registry answers both by publishing the current record again,
so compaction cannot leave the forged one as the last word.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

from qflare import operator
from qflare.crypto import generate_key
from qflare.errors import ProtocolError
from qflare.identity import Identity, TrustedKeys
from qflare.kafka import KafkaSettings, read_to_end, replay
from qflare.protocol import Decoder
from qflare.protocol.control import AuditEvent, RegistryCommand
from qflare.protocol.devices import Device
from qflare.protocol.topics import Topics
from qflare.protocol.training import RoundComplete
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    SimDevice,
    global_model,
    perturbed,
    rejections,
    round_results,
)
from tests.integration.services.harness import Fleet, RegistryProcess, audit_events, fleet_state, send_records


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _refused_by(source: str, events: list[AuditEvent]) -> dict[str, set[str]]:
    """subject -> reasons of every rejection ``source`` reported."""
    out: dict[str, set[str]] = {}
    for e in events:
        if e.source == source and e.event == "message.rejected":
            out.setdefault(str(e.subject), set()).add(e.reason)
    return out


async def test_an_old_record_or_a_bare_tombstone_changes_no_key_even_after_a_restart(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job, devices, updates = f"job-{unique}", plane.topics.devices.name, plane.topics.updates.name
    kept = await plane.device(f"kept-{unique}")
    rv_id, rv_key = f"rv-{unique}", generate_key()
    now = int(time.time() * 1000)
    old_active = plane._seal("registry", Device(rv_id, "active", rv_key.public_key, now, now, revision=1))
    # The topic once compaction dropped the first "active" record (superseded by the revocation)...
    await plane.device(rv_id, "revoked", key=rv_key, revision=2)
    # ...and the attack: that old signed "active" record re-published, and a null record for a
    # good device. (A copy of a record still in the topic is caught earlier, as a replay.)
    await plane.send(devices, rv_id, old_active)
    await send_records(kafka, devices, kept.device_id, None)

    want = {rv_id: {"stale_revision"}, kept.device_id: {"tombstone"}}

    def reported(events: list[AuditEvent]) -> bool:
        found = _refused_by("aggregator", events)
        return all(reasons <= found.get(subject, set()) for subject, reasons in want.items())

    await audit_events(kafka, keys_dir, reported)
    # A restarted aggregator rebuilds its key ring from the whole topic: same verdict.
    aggregator.stop()
    aggregator.start()
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)
    await plane.open_round(job, 1, 0, [kept.device_id, rv_id], deadline_s=8, min_updates=1)
    revoked = SimDevice(rv_id, rv_key, rv_key.signer(), plane.topics.updates.channel)
    await plane.send(updates, rv_id, *revoked.update(job, 1, 0, perturbed(1), 100))
    await plane.send(updates, kept.device_id, *kept.update(job, 1, 0, perturbed(0), 100))
    await rejections(kafka, keys_dir, lambda found: "revoked" in found)

    def closed(done: list[RoundComplete]) -> bool:
        return any(r.job_id == job and r.round == 1 for r in done)

    (result,) = [r for r in await round_results(kafka, keys_dir, closed) if r.job_id == job]
    assert result.status == "completed" and result.included == (kept.device_id,)
    assert aggregator.alive


async def _last_records(kafka: KafkaSettings, t: Topics, keys_dir: Path) -> dict[str, Any]:
    """The last record per key of the device topic, decoded (None for a tombstone): what
    compaction would keep."""
    decoder = Decoder(
        TrustedKeys(keys_dir), deployment=kafka.deployment_id, allowed_types={"device"}, max_age_ms=None
    )
    last: dict[str, Any] = {}
    async with replay(kafka, t.devices) as consumer:
        async for record in read_to_end(consumer, max_records=5000, timeout_s=10):
            key = record.key.decode()
            last[key] = None if record.value is None else (record.value, record.offset)
    out: dict[str, Any] = {}
    for key, found in last.items():
        try:
            out[key] = None if found is None else decoder.decode(found[0], t.devices.name).body
        except ProtocolError as exc:  # the junk, until the registry answers it
            out[key] = exc
    return out


async def test_the_registry_answers_a_forged_tombstone_or_old_record_with_the_current_one(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    t = fleet.topics
    tokens = await operator.issue_tokens(kafka, operator_id, 2, 600, {}, keys_dir=keys_dir)
    kept, gone = fleet.add(f"kept-{unique}", tokens[0]), fleet.add(f"rv-{unique}", tokens[1])
    kept.enrol()
    gone.enrol()

    def both(v: operator.FleetView) -> bool:
        return kept.device_id in v.devices and gone.device_id in v.devices

    await fleet_state(kafka, keys_dir, both)
    first = await _raw_value(kafka, t, gone.device_id)  # the signed "active" record, revision 1
    assert await operator.send_command(
        kafka, operator_id, RegistryCommand("revoke", gone.device_id, (), 0, {}), keys_dir=keys_dir
    )
    await fleet_state(kafka, keys_dir, lambda v: v.devices[gone.device_id].status == "revoked")
    await send_records(kafka, t.devices.name, gone.device_id, first)
    await send_records(kafka, t.devices.name, kept.device_id, None)
    await send_records(kafka, t.devices.name, kept.device_id, b"\x93junk")  # unverifiable bytes, too

    def healed(last: dict[str, Any]) -> bool:
        k, g = last.get(kept.device_id), last.get(gone.device_id)
        return (
            isinstance(k, Device)
            and k.status == "active"
            and isinstance(g, Device)
            and g.status == "revoked"
            and g.revision >= 2
        )

    for _ in range(60):
        last = await _last_records(kafka, t, keys_dir)
        if healed(last):
            break
        await asyncio.sleep(0.5)
    assert healed(last), last
    events = await audit_events(
        kafka, keys_dir, lambda ev: "tombstone" in _refused_by("registry", ev).get(kept.device_id, set())
    )
    assert "tombstone" in _refused_by("registry", events)[kept.device_id]
    # A consumer that rebuilds from the topic sees the true state.
    view = await operator.read_fleet(kafka, keys_dir)
    assert view.devices[gone.device_id].status == "revoked"
    assert view.devices[kept.device_id].status == "active"
    # The one way to remove a device: a signed deletion, which every consumer applies.
    assert await operator.send_command(
        kafka, operator_id, RegistryCommand("delete", kept.device_id, (), 0, {}), keys_dir=keys_dir
    )
    await fleet_state(kafka, keys_dir, lambda v: kept.device_id not in v.devices)
    assert registry.alive


async def _raw_value(kafka: KafkaSettings, t: Topics, device_id: str) -> bytes:
    async with replay(kafka, t.devices) as consumer:
        async for record in read_to_end(consumer, max_records=5000, timeout_s=10):
            if record.key == device_id.encode() and record.value is not None:
                return bytes(record.value)
    raise AssertionError(f"no record of {device_id}")
