"""Declared dataset sizes and quarantine against the real registry.

A device declares its dataset size at enrolment; the registry keeps it only up to
what the operator's token approves (and its own limit), so a device cannot
self-approve a weight. The aggregator may suspend a device (its quarantine); only an
operator lifts it. A suspended device stays enrolled and heartbeats.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.runtime import enrolment
from qflare import operator
from qflare.crypto import Signer
from qflare.identity import Identity, TrustedKeys, load_identity
from qflare.kafka import KafkaSettings
from qflare.protocol import seal
from qflare.protocol.control import AuditEvent, RegistryCommand
from qflare.protocol.devices import DECLARED_EXAMPLES_LABEL, MAX_EXAMPLES_LABEL, DeviceHealth
from qflare.protocol.envelope import new_message_id
from qflare.reasons import Reason
from qflare_cli.main import app
from tests.integration.services.harness import (
    Fleet,
    RegistryProcess,
    audit_events,
    fleet_state,
    read_topic,
    send_records,
)

LIMIT = 100_000


@pytest.fixture
def aggregator_id(keys_dir: Path) -> Identity:
    # Before the registry starts, so its trusted keys include the aggregator's.
    return load_identity("aggregator", keys_dir, create=True)


@pytest.fixture
def registry(
    kafka: KafkaSettings,
    keys_dir: Path,
    tmp_path: Path,
    operator_id: Identity,
    aggregator_id: Identity,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[RegistryProcess]:
    monkeypatch.setenv("QFLARE_REGISTRY_MAX_DECLARED_EXAMPLES", str(LIMIT))
    proc = RegistryProcess(kafka, keys_dir, tmp_path / "registry.log")
    proc.start()
    yield proc
    proc.stop()


def _rejected(events: list[AuditEvent], subject: str) -> dict[str, AuditEvent]:
    return {e.reason: e for e in events if e.event == "message.rejected" and e.subject == subject}


async def test_a_declared_size_is_kept_only_within_what_the_operator_approved(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    approved = {MAX_EXAMPLES_LABEL: "600"}
    tokens = await operator.issue_tokens(kafka, operator_id, 3, 600, approved, keys_dir=keys_dir)
    (open_token,) = await operator.issue_tokens(kafka, operator_id, 1, 600, {}, keys_dir=keys_dir)
    honest, liar, forger, huge = (f"{p}-{unique}" for p in ("ok", "big", "mx", "huge"))
    fleet.add(honest, tokens[0], num_examples=540).enrol()
    fleet.add(liar, tokens[1], num_examples=134_000_000).enrol()
    fleet.add(huge, open_token, num_examples=LIMIT + 1).enrol()  # no token max: the registry's limit
    # A device that approves itself: the reserved label, sent as a modified client would.
    key = fleet.add(forger, None).key
    body = enrolment(forger, key.public_key, tokens[2], kafka.deployment_id, {MAX_EXAMPLES_LABEL: "10000000"})
    forged = seal(body, key.signer(), kafka.topics.enrollments.channel, sender=forger)
    await send_records(kafka, kafka.topics.enrollments.name, forger, forged)

    def refused(ev: list[AuditEvent]) -> bool:
        return all("declared_examples" in _rejected(ev, d) for d in (liar, forger, huge))

    events = await audit_events(kafka, keys_dir, refused)
    over = _rejected(events, liar)["declared_examples"]
    assert over.detail["field"] == f"body.labels.{DECLARED_EXAMPLES_LABEL}"
    assert "approves at most 600" in str(over.detail["error"])
    assert "QFLARE_REGISTRY_MAX_DECLARED_EXAMPLES" in str(_rejected(events, huge)["declared_examples"].detail)
    reserved = _rejected(events, forger)["declared_examples"]
    assert reserved.detail["field"] == f"body.labels.{MAX_EXAMPLES_LABEL}"
    assert MAX_EXAMPLES_LABEL in str(reserved.detail["error"])

    # The refusal left the token unused: declaring what the operator approved enrols with it.
    fleet.add(liar, tokens[1], num_examples=600).enrol()
    view = await fleet_state(kafka, keys_dir, lambda v: honest in v.devices and liar in v.devices)
    assert view.devices[honest].labels[DECLARED_EXAMPLES_LABEL] == "540"
    assert view.devices[honest].labels[MAX_EXAMPLES_LABEL] == "600"
    assert view.devices[liar].labels[DECLARED_EXAMPLES_LABEL] == "600"
    assert forger not in view.devices and huge not in view.devices

    # A malformed approval fails the operator's command, with the registry's reason.
    with pytest.raises(operator.CommandRefused) as caught:
        await operator.issue_tokens(
            kafka, operator_id, 1, 600, {MAX_EXAMPLES_LABEL: "lots"}, keys_dir=keys_dir
        )
    assert caught.value.reason == Reason.DECLARED_EXAMPLES
    assert caught.value.field == f"body.labels.{MAX_EXAMPLES_LABEL}"
    assert registry.alive


async def _command(kafka: KafkaSettings, cmd: RegistryCommand, signer: Signer, sender: str) -> bytes:
    """Send a command signed by anyone (the test producer is not bound by ACLs); its message id."""
    msg_id = new_message_id()
    t = kafka.topics
    value = seal(cmd, signer, t.registry_control.channel, sender=sender, msg_id=msg_id)
    await send_records(kafka, t.registry_control.name, cmd.command, value)
    return msg_id


async def test_the_aggregator_suspends_and_only_an_operator_reinstates(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    aggregator_id: Identity,
    registry: RegistryProcess,
    fleet: Fleet,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = await operator.issue_tokens(kafka, operator_id, 2, 600, {}, keys_dir=keys_dir)
    flagged, other = f"fl-{unique}", f"ot-{unique}"
    device = fleet.add(flagged, tokens[0], num_examples=100)
    device.enrol()
    fleet.add(other, tokens[1], num_examples=100).enrol()
    await fleet_state(kafka, keys_dir, lambda v: flagged in v.devices and other in v.devices)

    labels = {"job_id": f"job-{unique}", "rounds": "3,4,5", "reason": "flagged 3 of 5"}
    sent = await _command(
        kafka, RegistryCommand("suspend", flagged, labels=labels), aggregator_id.signer, "aggregator"
    )
    events = await audit_events(kafka, keys_dir, lambda ev: any(e.event == "device.suspended" for e in ev))
    (suspended,) = [e for e in events if e.event == "device.suspended"]
    assert suspended.subject == flagged and suspended.severity == "warning" and suspended.ref_id == sent
    assert suspended.reason == "flagged 3 of 5" and suspended.detail["by"] == "aggregator"
    assert suspended.detail["job_id"] == labels["job_id"] and suspended.detail["rounds"] == "3,4,5"
    view = await fleet_state(kafka, keys_dir, lambda v: v.devices[flagged].status == "suspended")
    assert view.devices[flagged].labels[DECLARED_EXAMPLES_LABEL] == "100"

    # Still enrolled: its heartbeats are accepted (it comes online), and a restart's re-enrolment too.
    fleet.run(flagged)
    await read_topic(
        kafka,
        kafka.topics.health,
        TrustedKeys(keys_dir),
        until=lambda b: any(isinstance(x, DeviceHealth) and x.device_id == flagged for x in b),
    )
    device.enrol()

    # Lifting it is the operator's alone. The aggregator is refused by the allow-list; a device's
    # key is no control-plane key at all, so its command does not even verify.
    await _command(kafka, RegistryCommand("reinstate", flagged), aggregator_id.signer, "aggregator")
    await _command(kafka, RegistryCommand("reinstate", flagged), device.signer, flagged)
    with pytest.raises(operator.CommandRefused) as caught:  # an active device has nothing to lift
        await operator.send_command(
            kafka, operator_id, RegistryCommand("reinstate", other), keys_dir=keys_dir
        )
    assert caught.value.reason == Reason.NOT_SUSPENDED and "not suspended" in str(caught.value)
    with pytest.raises(operator.CommandRefused) as caught:
        await operator.send_command(
            kafka, operator_id, RegistryCommand("suspend", f"nobody-{unique}"), keys_dir=keys_dir
        )
    assert caught.value.reason == Reason.UNKNOWN_DEVICE
    events = await audit_events(
        kafka, keys_dir, lambda ev: {"sender_not_allowed", "unknown_key"} <= set(_rejected(ev, "reinstate"))
    )
    refusals = _rejected(events, "reinstate")
    assert "may not send registry_command:reinstate" in str(refusals["sender_not_allowed"].detail["error"])
    assert not [e for e in events if e.event == "device.reinstated"]

    # The operator's CLI shows the suspension and the declared size, then lifts it.
    monkeypatch.setenv("QFLARE_KAFKA_TOPIC_PREFIX", kafka.topic_prefix)
    listed = await asyncio.to_thread(
        CliRunner().invoke, app, ["devices", "list", "--json", "--keys-dir", str(keys_dir)]
    )
    assert listed.exit_code == 0, listed.output
    rows = {r["device_id"]: r for r in map(json.loads, listed.output.splitlines())}
    assert rows[flagged]["status"] == "suspended" and rows[flagged]["declared_examples"] == 100
    lifted = await asyncio.to_thread(
        CliRunner().invoke, app, ["devices", "reinstate", flagged, "--keys-dir", str(keys_dir)]
    )
    assert lifted.exit_code == 0 and "reinstated" in lifted.output, lifted.output
    again = await asyncio.to_thread(
        CliRunner().invoke, app, ["devices", "reinstate", flagged, "--keys-dir", str(keys_dir)]
    )
    assert again.exit_code == 1 and "not_suspended" in again.output, again.output
    view = await fleet_state(kafka, keys_dir, lambda v: v.devices[flagged].status == "active")
    events = await audit_events(kafka, keys_dir, lambda ev: any(e.event == "device.reinstated" for e in ev))
    (reinstated,) = [e for e in events if e.event == "device.reinstated"]
    assert reinstated.subject == flagged and reinstated.detail["by"] == "operator"
    # Nothing the suspended device sent (heartbeats, its re-enrolment) was refused.
    assert not [e for e in events if e.event == "message.rejected" and e.subject == flagged]
    assert registry.alive
