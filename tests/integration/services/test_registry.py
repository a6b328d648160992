"""The registry end to end against real Kafka, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

from qflare import operator
from qflare.crypto import generate_key
from qflare.identity import Identity, TrustedKeys
from qflare.kafka import KafkaSettings
from qflare.protocol.control import RegistryCommand
from qflare.protocol.devices import DeviceHealth
from tests.integration.services.harness import Fleet, RegistryProcess, audit_events, read_topic


async def _fleet_state(
    kafka: KafkaSettings, keys_dir: Path, want: int, check: object = None
) -> operator.FleetView:
    for _ in range(120):
        view = await operator.read_fleet(kafka, keys_dir)
        if len(view.devices) >= want and (check is None or check(view)):  # type: ignore[operator]
            return view
        await asyncio.sleep(0.5)
    raise AssertionError(f"registry state never reached {want} devices: {view.devices.keys()}")


async def test_enrol_20_revoke_one_rotate_another(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    tokens = await operator.issue_tokens(kafka, operator_id, 20, 600, {"site": "lab"}, keys_dir=keys_dir)
    ids = [f"dev-{unique}-{i:02d}" for i in range(20)]
    for device_id, token in zip(ids, tokens, strict=True):
        fleet.add(device_id, token).enrol()
    view = await _fleet_state(kafka, keys_dir, 20)
    assert {d.status for d in view.devices.values()} == {"active"}
    assert view.devices[ids[0]].labels["site"] == "lab"
    assert view.devices[ids[0]].key_id == fleet.devices[ids[0]].key.key_id

    assert await operator.send_command(
        kafka, operator_id, RegistryCommand("revoke", ids[0], (), 0, {}), keys_dir=keys_dir
    )
    # Rotation: a new key for ids[1] is refused until an operator authorises it.
    new_key = generate_key()
    current = fleet.devices[ids[1]].signer
    rotated = fleet.add(ids[1], None, key=new_key)
    rotated.enrol()
    # A device may leave by itself (signed deregistration).
    fleet.devices[ids[3]].deregister()
    await audit_events(kafka, keys_dir, lambda ev: any(e.reason == "key_mismatch" for e in ev))
    await operator.send_command(kafka, operator_id, RegistryCommand("rotate_key", ids[1], (), 2**42, {}))
    await audit_events(kafka, keys_dir, lambda ev: any(e.event == "device.rotation_authorised" for e in ev))
    # The window alone is not enough: the current key must vouch for the new one.
    rotated.enrol()
    await audit_events(kafka, keys_dir, lambda ev: any(e.reason == "rotation_unproven" for e in ev))
    rotated.enrol(previous=current)

    def settled(v: operator.FleetView) -> bool:
        return (
            v.devices[ids[0]].status == "revoked"
            and v.devices[ids[1]].key_id == new_key.key_id
            and v.devices[ids[3]].status == "deregistered"
        )

    view = await _fleet_state(kafka, keys_dir, 20, settled)
    assert view.devices[ids[0]].status == "revoked"
    assert view.devices[ids[1]].status == "active" and view.devices[ids[1]].key_id == new_key.key_id
    assert view.devices[ids[3]].status == "deregistered"
    for device_id in [ids[2], *ids[4:]]:
        assert view.devices[device_id].status == "active"
        assert view.devices[device_id].key_id == fleet.devices[device_id].key.key_id
    # Re-enrolment with the same key is idempotent: still one record, still active.
    fleet.devices[ids[2]].enrol()
    await asyncio.sleep(1)
    again = await operator.read_fleet(kafka, keys_dir)
    assert again.devices[ids[2]].status == "active" and len(again.devices) == 20


async def test_killed_device_goes_stale_then_offline(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    (token,) = await operator.issue_tokens(kafka, operator_id, 1, 600, {}, keys_dir=keys_dir)
    device_id = f"dev-{unique}-hb"
    fleet.add(device_id, token)
    fleet.run(device_id)
    t = fleet.topics

    def states(bodies: list[object]) -> list[str]:
        return [b.state for b in bodies if isinstance(b, DeviceHealth) and b.device_id == device_id]

    seen = await read_topic(
        kafka,
        t.health,
        TrustedKeys(keys_dir),
        until=lambda b: "online" in states(b),
    )
    assert states(seen)[0] == "online"
    fleet.kill(device_id)
    seen = await read_topic(
        kafka,
        t.health,
        TrustedKeys(keys_dir),
        until=lambda b: "offline" in states(b),
    )
    # One event per change, in order: never repeated per heartbeat.
    assert states(seen) == ["online", "stale", "offline"]
