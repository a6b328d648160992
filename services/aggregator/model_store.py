"""The model store: models an operator imported, read from ``qflare.model_store`` into PostgreSQL.

The operator publishes each import as a signed (usually chunked) ``stored_model``
record. ``Imports`` verifies it (signature, operator only, float32 tensors) and
keeps it in ``aggregator.model_store``; a job naming ``<name>@<version>`` then
takes its layout and its version 0 from there. The topic is compacted and read
from its start at every start-up, like the device records: storing an identical
model again changes nothing, so nothing needs a checkpoint, and an import that
reached Kafka while the aggregator was down is picked up. PostgreSQL is what
jobs are rebuilt from at start-up, before any topic is read.

A bad record is refused with a typed reason and audited (``qflare.poison``); a
name and version already stored with other content is ``model_conflict``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import structlog
from aiokafka import ConsumerRecord

from qflare import poison
from qflare.authority import authorise
from qflare.errors import ProtocolError, Rejected, ReplayError
from qflare.identity import TrustedKeys
from qflare.protocol import Decoder, Reassembler, wire
from qflare.protocol.limits import Limits
from qflare.protocol.store import StoredModel
from qflare.protocol.topics import TopicSpec
from qflare.reasons import Reason
from services.aggregator.publisher import Publisher
from services.aggregator.store import AggregatorStore

log = structlog.get_logger("qflare.aggregator")


def encode_stored(model: StoredModel) -> bytes:
    return b"".join(bytes(p) for p in wire.pack_parts(model.to_body()))


def decode_stored(data: bytes, limits: Limits) -> StoredModel:
    bounds = wire.WireLimits(
        max_bytes=limits.max_message_bytes,
        max_depth=limits.max_depth,
        max_array_len=limits.max_array_len,
        max_map_len=limits.max_map_len,
        max_str_len=limits.max_str_len,
        max_bin_len=limits.max_message_bytes,
    )
    return StoredModel.from_body(wire.unpack(data, bounds, root="body"))


class ModelStore:
    """``aggregator.model_store`` rows of one deployment (the caller's transaction)."""

    def __init__(self, store: AggregatorStore, limits: Limits) -> None:
        self.conn, self.scope, self.limits = store.conn, store.scope, limits

    async def put(self, model: StoredModel, sender: str) -> bool:
        """Store ``model``; False when the identical model is stored already.

        Raises ``Rejected`` (``model_conflict``) when its name and version hold other content.
        """
        body = encode_stored(model)
        digest = hashlib.sha256(body).digest()
        cur = await self.conn.execute(
            "INSERT INTO aggregator.model_store (scope, name, version, format, digest, body, sender) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING name",
            (self.scope, model.name, model.version, model.format, digest, body, sender),
        )
        if await cur.fetchone() is not None:
            return True
        cur = await self.conn.execute(
            "SELECT digest FROM aggregator.model_store WHERE scope = %s AND name = %s AND version = %s",
            (self.scope, model.name, model.version),
        )
        row = await cur.fetchone()
        if row is not None and bytes(row[0]) == digest:
            return False
        raise Rejected(
            Reason.MODEL_CONFLICT,
            f"model {model.ref!r} is stored already with other content; import it as another version",
            field="body.version",
        )

    async def get(self, ref: str) -> StoredModel | None:
        """The stored model ``<name>@<version>``, or None."""
        name, _, version = ref.partition("@")
        cur = await self.conn.execute(
            "SELECT body FROM aggregator.model_store WHERE scope = %s AND name = %s AND version = %s",
            (self.scope, name, version),
        )
        row = await cur.fetchone()
        return None if row is None else decode_stored(bytes(row[0]), self.limits)


class Imports:
    """Records of the model-store topic in; verified models into the store, bad ones audited."""

    def __init__(
        self, spec: TopicSpec, keys: TrustedKeys, limits: Limits, models: ModelStore, out: Publisher
    ) -> None:
        self.models, self.out = models, out
        self.store_conn = models.conn
        self.decoder = Decoder(
            keys, deployment=spec.deployment, allowed_types=spec.types, max_age_ms=None, limits=limits
        )
        # Only operators write here; a model up to the message limit may be in flight.
        self.reassembler = Reassembler(
            self.decoder, max_bytes_in_flight=limits.max_message_bytes, max_streams=8
        )

    async def record(self, record: ConsumerRecord[Any, Any]) -> None:
        """Handle one record of the topic (a whole model, or one chunk of it)."""
        try:
            await self._record(record)
        except ReplayError:
            return  # the same record again (a producer retry): already handled
        except Exception as exc:  # whatever one record holds, it is one rejection
            if poison.retry(exc):
                raise
            await self._reject(record, poison.rejection(exc))
        for expired in self.reassembler.drain_timeouts():
            await self._reject(record, expired, subject=None)
        await self.out.flush_outbox()

    async def _record(self, record: ConsumerRecord[Any, Any]) -> None:
        if record.value is None:
            raise Rejected(Reason.SCHEMA, "record has no value", field="$")
        msg = self.reassembler.feed(self.decoder.decode(record.value, record.topic))
        if msg is None:
            return
        authorise(msg)
        model = msg.body
        if not isinstance(model, StoredModel):
            raise Rejected(Reason.SCHEMA, f"expected stored_model, got {msg.header.type}", field="type")
        async with self.store_conn.transaction():
            if await self.models.put(model, msg.header.sender):
                detail: dict[str, str | int | float | bool | None] = {
                    "format": model.format,
                    "tensors": len(model.tensors),
                    "digest": msg.header.body_digest.hex(),
                }
                await self.out.queue_audit(
                    "model.imported", "info", subject=model.ref, ref_id=msg.header.id, detail=detail
                )
                log.info("model imported", model=model.ref, format=model.format, tensors=len(model.tensors))

    async def _reject(
        self, record: ConsumerRecord[Any, Any], exc: ProtocolError, subject: str | None = ""
    ) -> None:
        async with self.store_conn.transaction():
            await self.out.queue_rejection(
                exc,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                subject=poison.record_key(record) if subject == "" else subject,
            )
