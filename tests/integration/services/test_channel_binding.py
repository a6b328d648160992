"""A signed record acts only in the deployment and on the topic it was signed for.

The registry under test runs with its own deployment id and topic prefix. The same
operator command, validly signed by an operator key it trusts, is produced onto its
control topic three times: signed for another topic prefix, for another deployment,
and for this deployment's own control topic. Only the last gets past the signature
check to be acted upon (it names a device the registry does not know, so acting on it
is refusing it as ``unknown_device``); the other two are refused as ``signature``.
"""

from __future__ import annotations

from pathlib import Path

from qflare.identity import Identity
from qflare.kafka import KafkaSettings, make_producer
from qflare.protocol import Channel, seal, topics
from qflare.protocol.control import AuditEvent, RegistryCommand
from tests.integration.services.harness import RegistryProcess, audit_events


async def test_operator_commands_signed_for_elsewhere_are_not_acted_upon(
    kafka: KafkaSettings, keys_dir: Path, operator_id: Identity, registry: RegistryProcess, unique: str
) -> None:
    control = kafka.topics.registry_control
    channels = {
        "prefix": topics(f"o{unique}.", deployment=kafka.deployment_id).registry_control.channel,
        "deployment": Channel(f"other-{unique}", control.name),
        "here": control.channel,
    }
    command = RegistryCommand("revoke", f"ghost-{unique}", (), 0, {})
    producer = make_producer(kafka)
    await producer.start()
    try:
        for where, channel in channels.items():
            record = seal(command, operator_id.signer, channel, sender=operator_id.name)
            await producer.send_and_wait(control.name, record, key=f"{where}-{unique}".encode())
    finally:
        await producer.stop()

    def refused(events: list[AuditEvent]) -> dict[str, AuditEvent]:
        return {str(e.subject): e for e in events if e.event == "message.rejected"}

    wanted = {f"{where}-{unique}" for where in channels}
    found = refused(await audit_events(kafka, keys_dir, lambda ev: wanted <= set(refused(ev))))
    for where in ("prefix", "deployment"):
        event = found[f"{where}-{unique}"]
        assert (event.reason, event.detail["field"], event.detail["topic"]) == (
            "signature",
            "sig",
            control.name,
        )
    # The same command signed for here passed the signature and was acted upon.
    assert found[f"here-{unique}"].reason == "unknown_device"
    assert registry.metric("qflare_rejected_messages_total", reason="signature", topic=control.name) == 2
    assert registry.alive
