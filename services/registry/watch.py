"""The registry reads its own device topic back, so compaction keeps the true state.

Compaction keeps the last record per key. A bare tombstone, an old record
re-published, or any unverifiable bytes written after the current record would,
once compacted, be all that is left of a device. The registry answers each of
them by publishing the current record again (from PostgreSQL), which puts it last.
"""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord

from qflare.errors import ProtocolError, Rejected
from qflare.identity import TrustedKeys
from qflare.keys import Revisions, refuse_tombstone
from qflare.protocol import Decoder
from qflare.protocol.decoder import ReplayCache
from qflare.protocol.devices import Device
from qflare.protocol.topics import TopicSpec
from qflare.reasons import Reason
from services.registry.publisher import Publisher
from services.registry.store import RegistryStore


class DeviceTopicWatch:
    def __init__(
        self, spec: TopicSpec, trusted: TrustedKeys, name: str, store: RegistryStore, out: Publisher
    ) -> None:
        # No de-duplication: a replayed copy of an old record is exactly what must be seen.
        self.decoder = Decoder(
            trusted,
            deployment=spec.deployment,
            allowed_types=spec.types,
            max_age_ms=None,
            replay=ReplayCache(max_entries=0),
        )
        self.name, self.store, self.out = name, store, out
        #: Highest revision read back per device (since this start).
        self.published = Revisions()

    async def check(self, record: ConsumerRecord[Any, Any]) -> None:
        """Nothing if ``record`` is the current state; else the current record is re-published
        and a ``ProtocolError`` says why the record was refused."""
        named = record.key.decode(errors="replace") if record.key else None
        if record.value is None:
            await self._republish(named)
            refuse_tombstone(record.key)
        try:
            msg = self.decoder.decode(record.value, record.topic)
        except ProtocolError:
            # Garbage, a forgery, or a record in an older format: the current one goes after it.
            await self._republish(named)
            raise
        body = msg.body
        assert isinstance(body, Device)
        if msg.header.sender != self.name:
            await self._republish(body.device_id)
            raise Rejected(
                Reason.SENDER_NOT_ALLOWED,
                f"{msg.header.sender!r} may not publish device records",
                field="sender",
            )
        row = await self.store.device(body.device_id)
        if row is None or body.revision >= row.revision:
            self.published.admit(body)  # already current: cannot be stale
            return
        # Behind the database: history not yet caught up (enrol then revoke in one batch), or a
        # copy of an old record. Either way the current record goes out again (consumers ignore
        # an equal revision); only an out-of-order one is reported (``stale_revision``).
        await self._republish(body.device_id)
        self.published.admit(body)

    async def _republish(self, device_id: str | None) -> None:
        row = await self.store.device(device_id) if device_id else None
        if row is not None:
            await self.out.queue_device(row)
