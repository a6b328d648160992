"""The registry's signed answer to each enrolment (``enrollment_result``, docs/protocol.md §7.1).

A device used to learn its fate only by waiting to appear on ``qflare.devices``: a
refused enrolment (a reused token, a pinned key) was silent to it. Now every
enrolment the decoder accepts gets one result on the enrolment-results topic,
keyed by device id, that the device matches by its enrolment's message id.

Which enrolments get a result: only authenticated ones, because a result is a
registry-signed statement addressed to the signer. That covers acceptance, every
policy refusal (tokens, pinned key, revoked, sender mismatch) and ``stale`` (step 10
of docs/protocol.md §6 comes after the signature). A record refused before its
signature verified carries unauthenticated claims, so it gets only the
``message.rejected`` audit event; a ``replay`` gets nothing new, the first copy's
result stands.

Accepted results go through the outbox in the transaction that changed the device,
so they are published exactly when the change is; rejections change nothing and are
sent directly, acknowledged before the batch's offsets move (as audit rejections are).
"""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord

from qflare.errors import ProtocolError, QflareError
from qflare.identity import Identity
from qflare.protocol import Message, seal
from qflare.protocol.devices import Enrollment, EnrollmentResult
from qflare.protocol.envelope import Header, parse_envelope
from qflare.protocol.topics import Topics
from services.registry.publisher import Publisher
from services.registry.store import DeviceRow, RegistryStore

#: Decoder rejections that happen after the signature verified (docs/protocol.md §6 step 10).
_AFTER_SIGNATURE = frozenset({"stale"})
_ACCEPTED = {
    "new": "enrolled",
    "unchanged": "already enrolled with this key; nothing changed and no token was used",
    "rotated": "the key rotation an operator authorised is done",
}


class Results:
    def __init__(self, out: Publisher, store: RegistryStore, identity: Identity, topics: Topics) -> None:
        self.out = out
        self.store = store
        self.identity = identity
        self.topic = topics.enrollment_results.name
        self.channel = topics.enrollment_results.channel
        self.enrollments = topics.enrollments.name

    def _record(self, head: Header, result: EnrollmentResult) -> tuple[bytes, bytes]:
        # Addressed to the sender: for every enrolment that can be accepted it is the device id.
        return head.sender.encode(), seal(
            result, self.identity.signer, self.channel, sender=self.identity.name
        )

    async def accepted(self, msg: Message, row: DeviceRow, outcome: str) -> None:
        """Queue the accepted result; call inside the transaction that applied the enrolment."""
        head = msg.header
        result = EnrollmentResult(
            device_id=row.device_id,
            enrollment_id=head.id,
            key_id=head.key_id,
            status="accepted",
            reason=outcome,
            message=_ACCEPTED.get(outcome, outcome),
        )
        key, value = self._record(head, result)
        await self.store.outbox.queue(self.topic, key, value)

    async def rejected(self, record: ConsumerRecord[Any, Any], exc: QflareError, msg: Message | None) -> None:
        """Send the rejected result for ``record``, when it is an authenticated enrolment."""
        if record.topic != self.enrollments or record.value is None:
            return
        if msg is not None:
            if not isinstance(msg.body, Enrollment):
                return
            head = msg.header
        elif exc.reason in _AFTER_SIGNATURE:
            try:
                head = parse_envelope(record.value).header
            except ProtocolError:
                return
            if head.type != Enrollment.TYPE:
                return
        else:
            return
        result = EnrollmentResult(
            device_id=head.sender,
            enrollment_id=head.id,
            key_id=head.key_id,
            status="rejected",
            reason=exc.reason,
            field=exc.field[:256] if exc.field else None,
            # The text names ids and key ids only: tokens are never echoed (every device reads this).
            message=str(exc)[:1024],
        )
        key, value = self._record(head, result)
        await self.out.send(self.topic, key, value)
