"""Who may send what, and how old a command may be: one table every consumer enforces.

A valid signature only says which key signed; it does not say that key may
give this order. Every service's key is trusted for the control plane, so
without this table the aggregator's key could revoke devices or mint enrolment
tokens. ``ALLOWED`` names, per message type (and per command for command
bodies), the identities whose messages are obeyed. ``DEVICE`` stands for any
enrolled device: a key read from the device topic, never a service name.

A consumer calls :func:`authorise` on every decoded message before acting on
it, and :func:`check_command` on commands, which are orders for *now*: an old
one is refused, so a copy kept by an attacker cannot be replayed later.
"""

from __future__ import annotations

from collections.abc import Mapping

from qflare.errors import Rejected
from qflare.protocol import Message
from qflare.protocol.control import JOB_COMMANDS, REGISTRY_COMMANDS, JobCommand, RegistryCommand
from qflare.reasons import Reason

OPERATOR = "operator"
REGISTRY = "registry"
SCHEDULER = "scheduler"
AGGREGATOR = "aggregator"
AUDIT = "audit"
#: Not a name: any enrolled device (the decoder found its key on the device topic).
DEVICE = "<device>"
#: Names no device may use: they are the principals of the control plane.
SERVICES = frozenset({OPERATOR, REGISTRY, SCHEDULER, AGGREGATOR, AUDIT})

#: Message types that are orders: they carry a ``command`` and an age limit.
COMMAND_TYPES = frozenset({RegistryCommand.TYPE, JobCommand.TYPE})


def _commands(type_: str, names: frozenset[str], senders: frozenset[str]) -> dict[str, frozenset[str]]:
    return {f"{type_}:{name}": senders for name in names}


#: ``<type>`` or ``<type>:<command>`` -> the senders whose message is obeyed.
ALLOWED: Mapping[str, frozenset[str]] = {
    # Registry commands change who may join the fleet: the operator alone gives them...
    **_commands(RegistryCommand.TYPE, REGISTRY_COMMANDS - {"suspend"}, frozenset({OPERATOR})),
    # ... except a quarantine: the aggregator suspends a device flagged in too many recent
    # rounds. Lifting it (``reinstate``) stays the operator's alone.
    f"{RegistryCommand.TYPE}:suspend": frozenset({OPERATOR, AGGREGATOR}),
    **_commands(JobCommand.TYPE, JOB_COMMANDS - {"resume"}, frozenset({OPERATOR})),
    # The scheduler nudges its own waiting or overdue jobs with a signed resume.
    f"{JobCommand.TYPE}:resume": frozenset({OPERATOR, SCHEDULER}),
    "device": frozenset({REGISTRY}),
    "device_health": frozenset({REGISTRY}),
    "enrollment_result": frozenset({REGISTRY}),
    "round_task": frozenset({SCHEDULER}),
    "round_complete": frozenset({AGGREGATOR}),
    "model": frozenset({AGGREGATOR}),
    # Chunks carry a global model (aggregator), an imported model (operator) or a device's update.
    "model_chunk": frozenset({AGGREGATOR, OPERATOR, DEVICE}),
    # An imported model: the operator fills the aggregator's model store.
    "stored_model": frozenset({OPERATOR}),
    "model_update": frozenset({DEVICE}),
    # A device's failed reply to a round (its own; the aggregator checks body.device_id too).
    "round_failure": frozenset({DEVICE}),
    "enrollment": frozenset({DEVICE}),
    "deregistration": frozenset({DEVICE}),
    "heartbeat": frozenset({DEVICE}),
    "audit_event": frozenset({REGISTRY, SCHEDULER, AGGREGATOR, AUDIT}),
    "audit_head": frozenset({AUDIT}),
}


def action(msg: Message) -> str:
    """The table key of a message: its type, and its command when it has one."""
    body = msg.body
    if isinstance(body, JobCommand | RegistryCommand):
        return f"{msg.header.type}:{body.command}"
    return msg.header.type


def allowed(key: str, sender: str) -> bool:
    senders = ALLOWED.get(key, frozenset())
    if sender in senders:
        return True
    return DEVICE in senders and sender not in SERVICES


def authorise(msg: Message) -> None:
    """Refuse a message its sender may not send (``sender_not_allowed``)."""
    key = action(msg)
    if not allowed(key, msg.header.sender):
        raise Rejected(Reason.SENDER_NOT_ALLOWED, f"{msg.header.sender!r} may not send {key}", field="sender")


def check_command(msg: Message, *, max_age_s: float, now_ms: int) -> None:
    """Authorise a command and refuse it once older than ``max_age_s`` (``command_expired``)."""
    authorise(msg)
    age_ms = now_ms - msg.header.ts_ms
    if age_ms > max_age_s * 1000:
        raise Rejected(
            Reason.COMMAND_EXPIRED,
            f"{action(msg)} is {age_ms / 1000:.0f} s old; commands expire after {max_age_s:.0f} s",
            field="ts_ms",
        )
