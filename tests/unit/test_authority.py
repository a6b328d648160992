"""The sender allow-list: every message type has its principals, and commands have an age."""

from __future__ import annotations

import pytest

from qflare.authority import ALLOWED, DEVICE, SERVICES, action, allowed, authorise, check_command
from qflare.crypto import generate_key
from qflare.errors import Rejected
from qflare.protocol import Decoder, KeyRing, Message, seal
from qflare.protocol.channel import DEFAULT_DEPLOYMENT, Channel
from qflare.protocol.control import JobCommand, RegistryCommand
from qflare.protocol.messages import BODY_TYPES
from qflare.protocol.training import RoundComplete

Order = JobCommand | RegistryCommand | RoundComplete


def _message(body: Order, sender: str, ts_ms: int | None = None) -> Message:
    key = generate_key()
    ring = KeyRing()
    ring.add(sender, key.public_key)
    channel = Channel(DEFAULT_DEPLOYMENT, "qflare.test")
    record = seal(body, key.signer(), channel, sender=sender, ts_ms=ts_ms)
    return Decoder(ring, deployment=channel.deployment, max_age_ms=None).decode(record, channel.topic)


def test_every_message_type_has_an_entry() -> None:
    covered = {key.split(":")[0] for key in ALLOWED}
    assert covered == set(BODY_TYPES)


@pytest.mark.parametrize(
    ("body", "sender", "ok"),
    [
        (RegistryCommand("revoke", "d1"), "operator", True),
        (RegistryCommand("revoke", "d1"), "aggregator", False),
        (RegistryCommand("issue_tokens", None), "scheduler", False),
        # A quarantine: the aggregator may suspend; only an operator lifts it.
        (RegistryCommand("suspend", "d1"), "aggregator", True),
        (RegistryCommand("suspend", "d1"), "operator", True),
        (RegistryCommand("suspend", "d1"), "scheduler", False),
        (RegistryCommand("suspend", "d1"), "dev-1", False),
        (RegistryCommand("reinstate", "d1"), "operator", True),
        (RegistryCommand("reinstate", "d1"), "aggregator", False),
        (RegistryCommand("reinstate", "d1"), "dev-1", False),
        (JobCommand("j", "resume"), "scheduler", True),
        (JobCommand("j", "stop"), "scheduler", False),
        (JobCommand("j", "start"), "registry", False),
        (RoundComplete("j", 1, "completed", 1, 1, 1), "aggregator", True),
        (RoundComplete("j", 1, "completed", 1, 1, 1), "scheduler", False),
    ],
)
def test_authorise(body: Order, sender: str, ok: bool) -> None:
    msg = _message(body, sender)
    if ok:
        authorise(msg)
    else:
        with pytest.raises(Rejected) as caught:
            authorise(msg)
        assert caught.value.reason == "sender_not_allowed" and action(msg) in str(caught.value)


def test_devices_are_any_name_but_a_service_name() -> None:
    assert allowed("heartbeat", "dev-1") and not allowed("heartbeat", "registry")
    assert all(not allowed("model_update", name) for name in SERVICES)
    assert DEVICE not in SERVICES and not allowed("device", "dev-1")


def test_a_command_older_than_the_limit_expires() -> None:
    msg = _message(JobCommand("j", "pause"), "operator", ts_ms=1_000_000)
    check_command(msg, max_age_s=60, now_ms=1_000_000 + 60_000)
    with pytest.raises(Rejected) as caught:
        check_command(msg, max_age_s=60, now_ms=1_000_000 + 60_001)
    assert caught.value.reason == "command_expired"
