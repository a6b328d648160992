"""Records of the updates topic in, verified whole ``ModelUpdate`` (or ``RoundFailure``) messages out.

Verification is the protocol decoder's (limits, device signature, digest,
de-duplication, finite tensors); reassembly of chunked updates is the
protocol's ``Reassembler``. This module adds what crash safety needs on top:
each partition's ``Cursor`` learns which chunk streams are open, and after a
restart records below the checkpoint are skipped unless they belong to one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRecord

from qflare import metrics
from qflare.clock import now_ms
from qflare.errors import ChunkTimeoutError, ProtocolError, Rejected, UnknownKeyError
from qflare.keys import DeviceKeys
from qflare.protocol import Decoder, Message, Reassembler
from qflare.protocol.decoder import ReplayCache
from qflare.protocol.envelope import parse_envelope
from qflare.protocol.limits import MIB, Limits
from qflare.protocol.messages import ModelChunk
from qflare.protocol.topics import TopicSpec
from qflare.protocol.training import ModelUpdate, RoundFailure
from qflare.reasons import Reason
from services.aggregator.cursor import Cursor, StreamKey
from services.aggregator.publisher import SERVICE
from services.aggregator.weights import DeviceBook, check_sender

#: Completed streams remembered, so a late duplicate chunk is not taken for a new stream.
_REMEMBER_STREAMS = 4096


class Intake:
    def __init__(
        self,
        keys: DeviceKeys,
        spec: TopicSpec,
        limits: Limits,
        *,
        timeout_ms: int,
        max_streams: int,
        lifetime_ms: int = 600_000,
        max_bytes: int = 512 * MIB,
        max_bytes_per_sender: int = 64 * MIB,
        admit: Callable[[Message, ModelChunk], None] | None = None,
        book: DeviceBook | None = None,
    ) -> None:
        self.keys = keys
        self.book = book
        self.limits = limits
        # No age limit: whether an update counts must not depend on when it is read (a restart
        # re-reads the backlog); the round, version and de-duplication checks refuse replays.
        self.decoder = Decoder(
            keys,
            deployment=spec.deployment,
            allowed_types=spec.types,
            max_age_ms=None,
            limits=limits,
            replay=ReplayCache(max_entries=200_000),
        )
        self.reassembler = Reassembler(
            self.decoder,
            timeout_ms=timeout_ms,
            lifetime_ms=lifetime_ms,
            max_streams=max_streams,
            max_bytes_in_flight=max_bytes,
            max_bytes_per_sender=max_bytes_per_sender,
            admit=admit,
            remember_completed=_REMEMBER_STREAMS,
        )
        self._stream_bytes: dict[StreamKey, int] = {}
        self._finished: OrderedDict[StreamKey, None] = OrderedDict()

    def read(self, record: ConsumerRecord[Any, Any], cursor: Cursor) -> tuple[Message, int] | None:
        """The whole update and its size in record bytes, None while incomplete or already handled.

        Raises ``ProtocolError`` or ``Rejected`` for a record to refuse.
        """
        if record.value is None:
            raise Rejected(Reason.SCHEMA, "record has no value", field="$")
        size = len(record.value)
        if cursor.handled_before(record.offset) and not self._reopens(record.value, cursor):
            return None
        metrics.BYTES_IN.labels(SERVICE).inc(size)
        msg = self._decode(record.value, record.topic)
        chunk = msg.header.chunk
        if chunk is not None:
            key = (msg.header.sender, chunk.stream)
            if key in self._finished:
                return None  # a late copy of a chunk of an update already handled
            cursor.chunk_seen(key, record.offset, now_ms())
            self._stream_bytes[key] = self._stream_bytes.get(key, 0) + size
            try:
                whole = self.reassembler.feed(msg)
            except ProtocolError:
                self._finish(cursor, key)
                raise
            if whole is None:
                return None
            size = self._finish(cursor, key)
            msg = whole
        if not isinstance(msg.body, ModelUpdate | RoundFailure):
            raise Rejected(
                Reason.SCHEMA, f"expected model_update or round_failure, got {msg.header.type}", field="type"
            )
        return msg, size

    def expire(self, cursors: list[Cursor]) -> list[ChunkTimeoutError]:
        """Drop chunk streams idle past the timeout or open past their lifetime; returns the
        reassembler's reports of them."""
        cutoff = now_ms() - self.reassembler.timeout_ms
        timeouts = self.reassembler.drain_timeouts()
        evicted = self.reassembler.drain_evicted()
        for cursor in cursors:
            for key in cursor.expire(cutoff):
                self._stream_bytes.pop(key, None)
            # A stream evicted for its age (however busy) is done here too.
            for key in evicted:
                cursor.stream_done(key)
                self._stream_bytes.pop(key, None)
        return timeouts

    def _reopens(self, value: bytes, cursor: Cursor) -> bool:
        """After a restart, below the checkpoint: only chunks of streams still open then are fed again."""
        try:
            head = parse_envelope(value, self.limits).header
        except ProtocolError:
            return False
        return head.chunk is not None and (head.sender, head.chunk.stream) in cursor.open_streams

    def _finish(self, cursor: Cursor, key: StreamKey) -> int:
        cursor.stream_done(key)
        self._finished[key] = None
        while len(self._finished) > _REMEMBER_STREAMS:
            self._finished.popitem(last=False)
        return self._stream_bytes.pop(key, 0)

    def _decode(self, value: bytes, topic: str) -> Message:
        try:
            return self.decoder.decode(value, topic)
        except UnknownKeyError as exc:
            device = self.keys.retired_owner(exc.key_id)
            if device is not None and self.book is not None:
                check_sender(self.book, device)  # a key ring without suspended keys: say why
            if device is not None:
                raise Rejected(
                    Reason.REVOKED, f"device {device} is revoked or deregistered", field="key_id"
                ) from exc
            raise
