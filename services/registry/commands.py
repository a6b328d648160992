"""The registry's signed commands: tokens, revocation, deletion, key rotation, quarantine.

Each command is authorised by ``qflare.authority`` (operators for all of them; the
aggregator may also ``suspend``, the quarantine of a device flagged in too many recent
rounds), refused once too old, and applied at most once: its (sender, id) is stored in
the same PostgreSQL transaction as its effects, the device record it changes and the
audit event that names it (``ref``), all through the outbox.

A ``suspended`` device keeps its key (its heartbeats still verify) but is not selected
and its updates are refused, until an operator's ``reinstate`` makes it ``active``.
"""

from __future__ import annotations

from collections.abc import Callable

from qflare.authority import check_command
from qflare.clock import now_ms
from qflare.errors import Rejected, SchemaError
from qflare.protocol import Message
from qflare.protocol.control import RegistryCommand
from qflare.protocol.devices import MAX_EXAMPLES_LABEL, declared_examples
from qflare.reasons import Reason
from qflare.types import Scalar
from services.registry.liveness import Liveness
from services.registry.publisher import Publisher
from services.registry.store import DeviceRow, RegistryStore

#: Labels of a ``suspend`` that the audit event carries (the aggregator sets them).
SUSPEND_LABELS = ("job_id", "rounds", "reason")


class Commands:
    def __init__(
        self,
        store: RegistryStore,
        out: Publisher,
        live: Liveness,
        remember: Callable[[DeviceRow], None],
        *,
        max_age_s: float,
    ) -> None:
        self.store = store
        self.out = out
        self.live = live
        #: Puts a device's new key and status in the registry's own key cache.
        self.remember = remember
        self.max_age_s = max_age_s

    async def apply(self, msg: Message, body: RegistryCommand) -> None:
        check_command(msg, max_age_s=self.max_age_s, now_ms=now_ms())
        if body.command != "issue_tokens" and not body.device_id:
            raise Rejected(Reason.SCHEMA, f"{body.command} needs a device_id", field="body.device_id")
        device_id = str(body.device_id)
        retired = changed = None
        async with self.store.conn.transaction():
            # Applied ids are kept in PostgreSQL, so a copy is refused even after a restart
            # (the decoder's replay cache is only in memory).
            if not await self.store.first_application(msg.header.sender, msg.header.id):
                raise Rejected(
                    Reason.COMMAND_REPLAY, f"command {msg.header.id.hex()} was already applied", field="id"
                )
            if body.command == "issue_tokens":
                await self._issue_tokens(msg, body)
            elif body.command == "revoke":
                retired = await self.retire(device_id, "revoked", msg)
            elif body.command == "delete":
                # A signed record with status "deleted": consumers forget the device. No tombstone
                # follows; a bare one would be refused like any other.
                retired = await self.retire(device_id, "deleted", msg)
            elif body.command == "rotate_key":
                await self.store.authorise_rotation(device_id, body.expires_ms, body.key_id)
                await self.out.queue_audit("device.rotation_authorised", "info", subject=device_id, ref=msg)
            elif body.command == "suspend":
                changed = await self._suspend(device_id, msg, body)
            elif body.command == "reinstate":
                changed = await self._reinstate(device_id, msg)
        if retired is not None:
            await self.after_retire(retired)
        if changed is not None:
            self.remember(changed)

    async def _issue_tokens(self, msg: Message, body: RegistryCommand) -> None:
        try:
            # Checked now, so a typo fails the operator's command instead of every enrolment.
            declared_examples(body.labels, key=MAX_EXAMPLES_LABEL)
        except SchemaError as exc:
            raise Rejected(Reason.DECLARED_EXAMPLES, str(exc), field=f"body.{exc.field}") from exc
        count = await self.store.add_tokens(list(body.token_hashes), body.expires_ms, body.labels)
        await self.out.queue_audit(
            "tokens.issued", "info", reason=f"{count} tokens", subject=msg.header.sender, ref=msg
        )

    async def _suspend(self, device_id: str, msg: Message, body: RegistryCommand) -> DeviceRow:
        row = await self.store.device(device_id)
        if row is None:
            raise Rejected(Reason.UNKNOWN_DEVICE, f"no device {device_id}", field="body.device_id")
        if row.status not in ("active", "suspended"):
            # A retired key must stay retired: suspending would make it verify again.
            raise Rejected(
                Reason.REVOKED,
                f"device {device_id} is {row.status}; only an active device can be suspended",
                field="body.device_id",
            )
        detail: dict[str, Scalar] = {k: body.labels[k] for k in SUSPEND_LABELS if k in body.labels}
        detail["by"] = msg.header.sender
        if row.status == "suspended":
            # Already quarantined (e.g. flagged again before an operator looked): nothing
            # changes, but the command is still answered, so its sender sees it applied.
            detail["already"] = True
        else:
            row = await self._set(device_id, "suspended")
        await self.out.queue_audit(
            "device.suspended",
            "warning",
            reason=body.labels.get("reason", ""),
            subject=device_id,
            ref=msg,
            detail=detail,
        )
        return row

    async def _reinstate(self, device_id: str, msg: Message) -> DeviceRow:
        row = await self.store.device(device_id)
        if row is None:
            raise Rejected(Reason.UNKNOWN_DEVICE, f"no device {device_id}", field="body.device_id")
        if row.status != "suspended":
            raise Rejected(
                Reason.NOT_SUSPENDED,
                f"device {device_id} is {row.status}, not suspended: there is nothing to reinstate",
                field="body.device_id",
            )
        row = await self._set(device_id, "active")
        await self.out.queue_audit(
            "device.reinstated", "info", subject=device_id, ref=msg, detail={"by": msg.header.sender}
        )
        return row

    async def _set(self, device_id: str, status: str) -> DeviceRow:
        row = await self.store.set_status(device_id, status)
        assert row is not None  # read in this transaction, and only a command deletes
        await self.out.queue_device(row)
        return row

    async def retire(self, device_id: str, status: str, msg: Message) -> DeviceRow:
        """Revoke, delete or deregister a device, in the caller's transaction."""
        row = await self.store.set_status(device_id, status)
        if row is None:
            raise Rejected(Reason.UNKNOWN_DEVICE, f"no device {device_id}", field="device_id")
        await self.out.queue_device(row)
        await self.out.queue_audit(f"device.{status}", "warning", subject=device_id, ref=msg)
        return row

    async def after_retire(self, row: DeviceRow) -> None:
        """After the transaction: the key stops verifying, and the device leaves liveness."""
        self.remember(row)
        await self.live.forget(row.device_id)
