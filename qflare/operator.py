"""Operator actions on the device registry, as signed commands over Kafka.

The CLI never touches the registry's database: it signs a ``registry_command``
with the operator's key and publishes it on the registry's control topic; the
registry trusts operator keys from its trusted-keys directory. Enrolment
tokens are generated here and only their SHA-256 travels, so the registry
never stores a usable token.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from qflare.authority import authorise
from qflare.clock import now_ms
from qflare.errors import ProtocolError, QflareError, Reason, Rejected
from qflare.identity import DEFAULT_KEYS_DIR, Identity, TrustedKeys, load_identity, trusted_ring
from qflare.kafka import (
    KafkaSettings,
    make_consumer,
    make_producer,
    partitions,
    prepare_topics,
    read_to_end,
    replay,
)
from qflare.keys import Revisions, refuse_tombstone
from qflare.protocol import Decoder, seal
from qflare.protocol.control import AuditEvent, RegistryCommand
from qflare.protocol.devices import Device, DeviceHealth
from qflare.protocol.envelope import new_message_id
from qflare.protocol.topics import TopicSpec


def new_token() -> str:
    return "qft_" + secrets.token_urlsafe(24)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def send_command(
    kafka: KafkaSettings,
    operator: Identity,
    command: RegistryCommand,
    *,
    keys_dir: Path = DEFAULT_KEYS_DIR,
    confirm_s: float = 30.0,
) -> bool:
    """Publish a signed command; with ``confirm_s`` > 0, wait for the registry's audit record of it.

    Returns True once confirmed (or immediately when not waiting), False if the
    registry did not confirm in time: the command stays queued in Kafka and is
    applied when the registry runs. ``CommandRefused`` (the registry's reason and
    field) if the registry refused it.
    """
    t = kafka.topics
    await prepare_topics(kafka, t)
    msg_id = new_message_id(now_ms())
    watcher = _AuditWatcher(kafka, t.audit, keys_dir) if confirm_s > 0 else None
    if watcher is not None:
        await watcher.start()
    producer = make_producer(kafka)
    await producer.start()
    try:
        record = seal(
            command, operator.signer, t.registry_control.channel, sender=operator.name, msg_id=msg_id
        )
        await producer.send_and_wait(t.registry_control.name, record, key=command.command.encode())
    finally:
        await producer.stop()
    if watcher is None:
        return True
    try:
        answer = await watcher.wait_for(msg_id, confirm_s)
    finally:
        await watcher.stop()
    if answer is not None and answer.event == "message.rejected":
        raise CommandRefused(answer)
    return answer is not None


class CommandRefused(Rejected):
    """The registry refused an operator's command; ``reason`` and ``field`` are the registry's."""

    def __init__(self, event: AuditEvent) -> None:
        reason = _REASONS.get(event.reason, Reason.ERROR)
        error, field = event.detail.get("error"), event.detail.get("field")
        super().__init__(
            reason,
            f"the registry refused the command ({event.reason}): {error}",
            field=field if isinstance(field, str) else None,
        )


_REASONS = {r.value: r for r in Reason}


class _AuditWatcher:
    """Follows the audit topic from its current end, looking for events about one message."""

    def __init__(self, kafka: KafkaSettings, topic: TopicSpec, keys_dir: Path) -> None:
        self.kafka = kafka
        self.parts = partitions(topic)
        self.decoder = Decoder(
            TrustedKeys(keys_dir),
            deployment=kafka.deployment_id,
            allowed_types={"audit_event"},
            max_age_ms=None,
        )

    async def start(self) -> None:
        self.consumer = make_consumer(self.kafka, group_id=None)
        await self.consumer.start()
        self.consumer.assign(self.parts)
        await self.consumer.seek_to_end(*self.parts)
        for tp in self.parts:  # resolve the end offsets now, before the command is sent
            await self.consumer.position(tp)

    async def wait_for(self, ref_id: bytes, timeout_s: float) -> AuditEvent | None:
        """The registry's audit event naming ``ref_id`` (what it did, or ``message.rejected``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            for records in (await self.consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        body = self.decoder.decode(record.value, record.topic).body
                    except ProtocolError:
                        continue  # not ours to judge here; the audit service records rejections
                    if isinstance(body, AuditEvent) and body.ref_id == ref_id and body.source == "registry":
                        return body
        return None

    async def stop(self) -> None:
        await self.consumer.stop()


async def issue_tokens(
    kafka: KafkaSettings,
    operator: Identity,
    count: int,
    ttl_s: float,
    labels: dict[str, str],
    *,
    keys_dir: Path = DEFAULT_KEYS_DIR,
    confirm_s: float = 30.0,
) -> list[str]:
    tokens = [new_token() for _ in range(count)]
    expires_ms = now_ms() + int(ttl_s * 1000)
    command = RegistryCommand("issue_tokens", None, tuple(token_hash(t) for t in tokens), expires_ms, labels)
    if not await send_command(kafka, operator, command, keys_dir=keys_dir, confirm_s=confirm_s):
        raise RegistryUnconfirmedError(
            f"the registry did not confirm {count} new tokens within {confirm_s:.0f} s; they stay queued "
            "and become valid once it processes them (is `qflare run registry` running?)"
        )
    return tokens


class RegistryUnconfirmedError(QflareError):
    retriable = True
    reason = Reason.UNCONFIRMED


@dataclass
class FleetView:
    devices: dict[str, Device]
    health: dict[str, str]
    rejected: int


async def read_fleet(kafka: KafkaSettings, keys_dir: Path, *, timeout_s: float = 10.0) -> FleetView:
    """The registry's published state: every device record and its latest health."""
    t = kafka.topics
    decoder = Decoder(
        trusted_ring(keys_dir),
        deployment=kafka.deployment_id,
        allowed_types={"device", "device_health"},
        max_age_ms=None,
    )
    view = FleetView({}, {}, 0)
    revisions = Revisions()
    async with replay(kafka, t.devices, t.health) as consumer:
        async for record in read_to_end(consumer, max_records=5000, timeout_s=timeout_s):
            try:
                if record.value is None:
                    refuse_tombstone(record.key)  # unsigned: the device stays as it was
                msg = decoder.decode(record.value, record.topic)
                body = msg.body
                if isinstance(body, Device):
                    authorise(msg)  # only the registry publishes devices
                    if not revisions.admit(body):
                        continue
            except ProtocolError:
                view.rejected += 1
                continue
            if isinstance(body, Device):
                if body.status == "deleted":
                    view.devices.pop(body.device_id, None)
                else:
                    view.devices[body.device_id] = body
            elif isinstance(body, DeviceHealth):
                view.health[body.device_id] = body.state
    return view


def operator_identity(keys_dir: Path, *, create: bool = False) -> Identity:
    """The operator's key; ``create`` only where a development command makes its own stack."""
    return load_identity("operator", keys_dir, create=create)
