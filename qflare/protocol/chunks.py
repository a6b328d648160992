"""Splitting large bodies into ``model_chunk`` records, and putting them back together.

Every chunk is a complete signed envelope, so each is verified on its own
before it touches reassembly memory. Chunks of one body share a stream id
(a UUIDv7, also the reassembled message's id) and carry index/count in the
signed header; the chunk body carries the slice, its offset, and the size and
SHA-256 of the whole body, checked once the last slice is in.

The ``Reassembler`` bounds memory (bytes in flight in all and per sender,
number of streams in all and per sender) and time (streams idle past
``timeout_ms``, or open longer than ``lifetime_ms`` however busy, are evicted
and reported). A receiver that knows what size a stream may declare (the
aggregator knows each job's model layout) passes ``admit`` to refuse any
other size before the stream holds memory.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from qflare.clock import now_ms
from qflare.crypto.base import Signer
from qflare.errors import ChunkError, ChunkTimeoutError, LimitError, ProtocolError, Rejected, SchemaError
from qflare.protocol import wire
from qflare.protocol.body import Body
from qflare.protocol.channel import Channel
from qflare.protocol.decoder import Decoder, Message
from qflare.protocol.envelope import Chunk, Header, new_message_id, seal_parts
from qflare.protocol.limits import DEFAULT_LIMITS, MIB, Limits
from qflare.protocol.messages import ModelChunk
from qflare.reasons import Reason

#: Room for the chunk body's own fields around the slice.
_CHUNK_FRAMING = 1024


def seal_chunked(
    body: Body,
    signer: Signer,
    channel: Channel,
    *,
    sender: str,
    round: int | None = None,
    ts_ms: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    chunk_bytes: int | None = None,
) -> list[bytes]:
    """Records for ``body``: one ordinary envelope if it fits, else ``model_chunk`` envelopes.

    ``chunk_bytes`` (default: what fits one record under ``limits``) is the
    largest slice per chunk. Produce all records with the same Kafka key so
    they land on one partition in order.
    """
    parts = wire.pack_parts(body.to_body())
    size = sum(len(p) for p in parts)
    largest = limits.chunk_body_bytes - _CHUNK_FRAMING
    slice_bytes = largest if chunk_bytes is None else chunk_bytes
    if not 0 < slice_bytes <= largest:
        raise LimitError(f"chunk size must be in 1..{largest}", field="chunk_bytes")
    ts = now_ms() if ts_ms is None else ts_ms
    if size <= slice_bytes:
        return [seal_parts(body.TYPE, parts, signer, channel, sender=sender, round=round, ts_ms=ts)]
    if size > limits.max_message_bytes:
        raise LimitError(f"body of {size} bytes exceeds {limits.max_message_bytes}", field="body")
    count = -(-size // slice_bytes)
    if count > limits.max_chunks:
        raise LimitError(f"{count} chunks exceed {limits.max_chunks}; raise chunk_bytes", field="chunk.count")
    whole = memoryview(b"".join(parts))
    digest = hashlib.sha256(whole).digest()
    stream = new_message_id(ts)
    records = []
    for index in range(count):
        offset = index * slice_bytes
        piece = ModelChunk(body.TYPE, size, offset, digest, whole[offset : offset + slice_bytes])
        records.append(
            seal_parts(
                ModelChunk.TYPE,
                wire.pack_parts(piece.to_body()),
                signer,
                channel,
                sender=sender,
                round=round,
                ts_ms=ts,
                chunk=Chunk(stream, index, count),
            )
        )
    return records


@dataclass(slots=True)
class _Stream:
    #: The header of chunk 0 once it is in (until then the first chunk received).
    first: Header
    body: ModelChunk
    #: Where the stream's chunks were read from; every chunk must come from there.
    channel: Channel
    count: int
    buffer: bytearray
    last_ms: int
    #: When the stream was opened: its absolute lifetime counts from here, not from the last chunk.
    opened_ms: int
    #: index -> (offset, length) of each slice received.
    slices: dict[int, tuple[int, int]] = field(default_factory=dict)


class Reassembler:
    """Feeds on decoded messages; returns whole messages when their last chunk arrives."""

    def __init__(
        self,
        decoder: Decoder,
        *,
        max_bytes_in_flight: int = 512 * MIB,
        max_streams: int = 64,
        max_streams_per_sender: int = 4,
        timeout_ms: int = 120_000,
        lifetime_ms: int = 600_000,
        max_bytes_per_sender: int | None = None,
        admit: Callable[[Message, ModelChunk], None] | None = None,
        remember_completed: int = 4096,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.decoder = decoder
        self.max_bytes_in_flight = max_bytes_in_flight
        # A sender's streams may hold half the memory by default (one body of the message limit):
        # one device that declares huge streams and trickles a chunk now and then cannot shut out
        # the others. A receiver that knows its senders' sizes sets less (the aggregator does).
        self.max_bytes_per_sender = (
            max_bytes_in_flight // 2 if max_bytes_per_sender is None else max_bytes_per_sender
        )
        # Keeping a stream alive with a chunk per timeout does not keep it forever.
        self.lifetime_ms = lifetime_ms
        #: Raises (a ``ProtocolError``) to refuse a stream whose declared size or round does not fit.
        self.admit = admit
        self.max_streams = max_streams
        # One misbehaving (but authenticated) device must not take every slot.
        self.max_streams_per_sender = max_streams_per_sender
        self.timeout_ms = timeout_ms
        self.clock = clock or decoder.clock
        self._streams: dict[tuple[str, bytes], _Stream] = {}
        self._completed: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._remember = remember_completed
        self._timeouts: list[ChunkTimeoutError] = []
        self.bytes_in_flight = 0
        self._sender_bytes: dict[str, int] = {}
        self._evicted: list[tuple[str, bytes]] = []

    @property
    def streams(self) -> int:
        return len(self._streams)

    def feed(self, msg: Message) -> Message | None:
        """``msg`` itself if unchunked; None while a stream is incomplete or for a duplicate chunk."""
        if msg.header.chunk is None:
            return msg
        try:
            return self._feed(msg, msg.header.chunk)
        except ProtocolError as exc:
            self.decoder.count(exc)
            raise

    def drain_timeouts(self) -> list[ChunkTimeoutError]:
        """Streams evicted for inactivity since the last call (report them as audit events)."""
        self.expire()
        out, self._timeouts = self._timeouts, []
        return out

    def drain_evicted(self) -> list[tuple[str, bytes]]:
        """(sender, stream) of the streams evicted since the last call, e.g. to forget their offsets."""
        self.expire()
        out, self._evicted = self._evicted, []
        return out

    def expire(self) -> None:
        now = self.clock()
        cutoff, born = now - self.timeout_ms, now - self.lifetime_ms
        for key in [k for k, s in self._streams.items() if s.last_ms < cutoff or s.opened_ms < born]:
            stream = self._drop(key)
            if len(self._evicted) < self._remember:  # bounded for callers that never drain it
                self._evicted.append(key)
            got = f"{len(stream.slices)}/{stream.count}"
            why = "timed out" if stream.last_ms < cutoff else "outlived its lifetime"
            exc = ChunkTimeoutError(
                f"stream {key[1].hex()} from {key[0]!r} {why} at {got} chunks", field="chunk.stream"
            )
            self.decoder.count(exc)
            self._timeouts.append(exc)

    def _drop(self, key: tuple[str, bytes]) -> _Stream:
        stream = self._streams.pop(key)
        self.bytes_in_flight -= stream.body.size
        left = self._sender_bytes.pop(key[0], 0) - stream.body.size
        if left > 0:
            self._sender_bytes[key[0]] = left
        return stream

    def _open(self, key: tuple[str, bytes], msg: Message, body: ModelChunk, count: int) -> _Stream:
        if body.inner_type not in self.decoder.allowed_types:
            raise SchemaError(f"type {body.inner_type!r} is not accepted here", field="body.inner_type")
        if body.size > self.decoder.limits.max_message_bytes:
            raise LimitError(f"stream of {body.size} bytes exceeds the message limit", field="body.size")
        if len(self._streams) >= self.max_streams:
            raise LimitError(f"already reassembling {self.max_streams} streams", field="chunk.stream")
        if sum(1 for sender, _ in self._streams if sender == key[0]) >= self.max_streams_per_sender:
            raise LimitError(
                f"{key[0]!r} already has {self.max_streams_per_sender} open streams", field="chunk.stream"
            )
        if self.bytes_in_flight + body.size > self.max_bytes_in_flight:
            raise LimitError(
                f"{body.size} more bytes would exceed {self.max_bytes_in_flight} in flight", field="body.size"
            )
        held = self._sender_bytes.get(key[0], 0)
        if held + body.size > self.max_bytes_per_sender:
            raise Rejected(
                Reason.QUOTA,
                f"{key[0]!r} holds {held} bytes in open streams; {body.size} more exceed its "
                f"{self.max_bytes_per_sender}",
                field="body.size",
            )
        if self.admit is not None:
            self.admit(msg, body)  # before the buffer exists: a refused size costs no memory
        now = self.clock()
        stream = _Stream(msg.header, body, msg.channel, count, bytearray(body.size), now, now)
        self._streams[key] = stream
        self.bytes_in_flight += body.size
        self._sender_bytes[key[0]] = held + body.size
        return stream

    def _feed(self, msg: Message, chunk: Chunk) -> Message | None:
        body = msg.body
        if not isinstance(body, ModelChunk):
            raise ChunkError("chunk field set on a non-chunk body", field="type")
        self.expire()
        key = (msg.header.sender, chunk.stream)
        if key in self._completed:
            return None
        stream = self._streams.get(key)
        if stream is None:
            stream = self._open(key, msg, body, chunk.count)
        first, ref = stream.first, stream.body
        for name, mine, theirs in (
            ("chunk.count", stream.count, chunk.count),
            ("channel", stream.channel, msg.channel),
            ("key_id", first.key_id, msg.header.key_id),
            ("round", first.round, msg.header.round),
            ("body.inner_type", ref.inner_type, body.inner_type),
            ("body.size", ref.size, body.size),
            ("body.digest", ref.digest, body.digest),
        ):
            if mine != theirs:
                self._drop(key)
                raise ChunkError("differs from earlier chunks of the stream", field=name)
        if chunk.index in stream.slices:
            return None  # the same index again under another id: the first copy stands
        end = body.offset + len(body.data)
        if end > body.size:
            self._drop(key)
            raise ChunkError(f"slice ends at {end}, past the body size {body.size}", field="body.offset")
        # Written in place as it arrives; that the slices tile the body is checked at the end.
        stream.buffer[body.offset : end] = body.data
        stream.slices[chunk.index] = (body.offset, len(body.data))
        if chunk.index == 0:
            stream.first = msg.header
        stream.last_ms = self.clock()
        if len(stream.slices) < chunk.count:
            return None
        return self._finish(key, stream)

    def _finish(self, key: tuple[str, bytes], stream: _Stream) -> Message:
        self._drop(key)
        self._completed[key] = None
        while len(self._completed) > self._remember:
            self._completed.popitem(last=False)
        first, ref = stream.first, stream.body
        expected = 0
        for index in range(stream.count):
            offset, length = stream.slices[index]
            if offset != expected:
                raise ChunkError(
                    f"chunk {index} starts at {offset}, expected {expected}", field="body.offset"
                )
            expected += length
        if expected != ref.size or not hmac.compare_digest(
            hashlib.sha256(stream.buffer).digest(), ref.digest
        ):
            raise ChunkError("reassembled body does not match its size and digest", field="body.digest")
        header = Header(
            v=first.v,
            type=ref.inner_type,
            id=key[1],
            sender=first.sender,
            key_id=first.key_id,
            ts_ms=first.ts_ms,
            round=first.round,
            body_digest=ref.digest,
            chunk=None,
            sig_alg=first.sig_alg,
        )
        return self.decoder.accept(header, memoryview(stream.buffer), stream.channel)
