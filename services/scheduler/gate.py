"""What the scheduler obeys: allowed senders, fresh commands applied once, and the audit of refusals.

Every refusal (a sender not allowed, an expired or repeated command, a state
row the scheduler did not sign) is counted and published as a signed audit
event, so the audit trail shows it and not only the scheduler's log.
"""

from __future__ import annotations

import faust
import structlog

from qflare import metrics
from qflare.authority import authorise, check_command
from qflare.clock import now_ms
from qflare.errors import Rejected
from qflare.identity import Identity
from qflare.protocol import Decoder, Message, seal
from qflare.protocol.channel import Channel
from qflare.protocol.control import AuditEvent
from qflare.reasons import Reason
from services.scheduler.config import SchedulerSettings
from services.scheduler.state import SignedTable

log = structlog.get_logger("qflare.scheduler")
SERVICE = "scheduler"


class Gate:
    def __init__(
        self,
        cfg: SchedulerSettings,
        identity: Identity,
        decoder: Decoder,
        audit_topic: faust.TopicT,
        audit_channel: Channel,
        applied: SignedTable,
    ) -> None:
        self.cfg, self.identity, self.decoder = cfg, identity, decoder
        self.audit_topic, self.audit_channel = audit_topic, audit_channel
        #: Job commands applied, keyed ``<sender>:<id hex>``.
        self.applied = applied
        self.tables: tuple[SignedTable, ...] = (applied,)

    async def allowed(self, msg: Message) -> bool:
        try:
            authorise(msg)
        except Rejected as exc:
            await self.refused(exc, msg)
            return False
        return True

    async def fresh_command(self, msg: Message) -> bool:
        """A job command from an allowed sender, young enough, and not applied before.

        Called inside the agent (the applied-commands table is written here).
        """
        now, max_age_s = now_ms(), self.cfg.command_max_age_s
        key = f"{msg.header.sender}:{msg.header.id.hex()}"
        try:
            check_command(msg, max_age_s=max_age_s, now_ms=now)
            if self.applied.get(key) is not None:
                raise Rejected(
                    Reason.COMMAND_REPLAY, f"command {msg.header.id.hex()} was already applied", field="id"
                )
        except Rejected as exc:
            await self.refused(exc, msg)
            return False
        self.applied[key] = {"ts_ms": msg.header.ts_ms}
        # An id past the age limit needs no memory: a copy of it is refused as expired.
        oldest = now - int(max_age_s * 1000) - self.decoder.max_skew_ms
        for seen in self.applied.row_keys():
            row = self.applied.get(seen)
            ts = row.get("ts_ms") if row is not None else None
            if not isinstance(ts, int) or ts < oldest:
                del self.applied[seen]
        return True

    async def refused(self, exc: Rejected, msg: Message | None, *, subject: str | None = None) -> None:
        metrics.REJECTED.labels(SERVICE, "control" if msg else "state", exc.reason).inc()
        log.warning("refused", reason=exc.reason, error=str(exc), subject=subject)
        event = AuditEvent(
            "message.rejected" if msg else "state.rejected",
            "warning",
            self.identity.name,
            reason=exc.reason,
            subject=subject or (msg.header.sender if msg else None),
            ref_id=msg.header.id if msg else None,
            detail={"field": exc.field or "", "error": str(exc)[:512]},
        )
        record = seal(event, self.identity.signer, self.audit_channel, sender=self.identity.name)
        await self.audit_topic.send(key=self.identity.name.encode(), value=record)

    async def report_state(self) -> None:
        """Audit the table rows found invalid since the last call."""
        for table in self.tables:
            while table.invalid:
                key, exc = table.invalid.pop(0)
                await self.refused(exc, None, subject=f"{table.name}/{key}"[:256])
