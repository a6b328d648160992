"""The envelope: build and sign one (``seal``), or parse one strictly (``parse_envelope``).

Wire form: a msgpack map of exactly 12 entries. The signature covers
``header.signing_bytes(channel)``: a msgpack array of the domain string, the
version, the channel (deployment id and topic name, known to both ends but
never sent) and the other nine header fields in fixed order, each in its
shortest msgpack form. The body is
bound only through ``body_digest`` = SHA-256(body), so verifying the header
never needs the (possibly megabytes-long) body in the same buffer.
docs/protocol.md gives the byte layout.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from qflare.clock import now_ms
from qflare.crypto.base import KEY_ID_BYTES, ML_DSA_65, MLDSA65_SIGNATURE_BYTES, Signer
from qflare.errors import LimitError, SchemaError, VersionError
from qflare.protocol import wire
from qflare.protocol.body import ID_PATTERN, Body
from qflare.protocol.channel import Channel
from qflare.protocol.limits import DEFAULT_LIMITS, Limits

#: Version 2 binds the deployment id and topic into the signature (version 1 bound neither).
PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
#: First element of the signed array: a signature over an envelope can never be
#: mistaken for a signature over anything else this key signs.
SIGNING_DOMAIN = "qflare.envelope"
FIELDS = (
    "v",
    "type",
    "id",
    "sender",
    "key_id",
    "ts_ms",
    "round",
    "body_digest",
    "body",
    "chunk",
    "sig_alg",
    "sig",
)
CHUNK_FIELDS = ("stream", "index", "count")
_UINT64_MAX = (1 << 64) - 1
_INT64_MAX = (1 << 63) - 1
_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Fixed bytes of every record: the map header and the ``body`` key.
_RECORD_HEAD = wire.map_header(len(FIELDS))
_BODY_KEY = wire.pack("body")


@dataclass(frozen=True, slots=True)
class Chunk:
    """Position of one record in a chunked stream."""

    stream: bytes
    index: int
    count: int


@dataclass(frozen=True, slots=True)
class Header:
    """Every envelope field except ``body`` and ``sig``: exactly what is signed."""

    v: int
    type: str
    id: bytes
    sender: str
    key_id: bytes
    ts_ms: int
    round: int | None
    body_digest: bytes
    chunk: Chunk | None
    sig_alg: str

    def signing_bytes(self, channel: Channel) -> bytes:
        """What the signature covers: the header fields, bound to ``channel``."""
        chunk = None if self.chunk is None else [self.chunk.stream, self.chunk.index, self.chunk.count]
        return wire.pack(
            [
                SIGNING_DOMAIN,
                self.v,
                channel.deployment,
                channel.topic,
                self.type,
                self.id,
                self.sender,
                self.key_id,
                self.ts_ms,
                self.round,
                self.body_digest,
                chunk,
                self.sig_alg,
            ]
        )


@dataclass(frozen=True, slots=True)
class Envelope:
    header: Header
    body: memoryview
    sig: bytes


def new_message_id(ts_ms: int | None = None) -> bytes:
    """A UUIDv7 (RFC 9562): 48-bit ms timestamp, version 7, variant 10, 74 random bits."""
    ms = now_ms() if ts_ms is None else ts_ms
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | (rand >> 68 & 0xFFF) << 64
        | 0b10 << 62
        | rand & ((1 << 62) - 1)
    )
    return value.to_bytes(16, "big")


def is_uuid7(raw: bytes) -> bool:
    return len(raw) == 16 and raw[6] >> 4 == 7 and raw[8] >> 6 == 0b10


def encode_envelope(header: Header, body: Sequence[wire.Buffer], sig: bytes) -> bytes:
    """Frame header, body parts and signature into one record: the only copy of the body."""
    chunk = header.chunk
    head = wire.pack_entries(
        [
            ("v", header.v),
            ("type", header.type),
            ("id", header.id),
            ("sender", header.sender),
            ("key_id", header.key_id),
            ("ts_ms", header.ts_ms),
            ("round", header.round),
            ("body_digest", header.body_digest),
        ]
    )
    tail = wire.pack_entries(
        [
            (
                "chunk",
                None
                if chunk is None
                else {"stream": chunk.stream, "index": chunk.index, "count": chunk.count},
            ),
            ("sig_alg", header.sig_alg),
            ("sig", sig),
        ]
    )
    size = sum(len(p) for p in body)
    return b"".join([_RECORD_HEAD, head, _BODY_KEY, wire.bin_header(size), *body, tail])


def seal_parts(
    type_: str,
    body: Sequence[wire.Buffer],
    signer: Signer,
    channel: Channel,
    *,
    sender: str,
    round: int | None = None,
    ts_ms: int | None = None,
    msg_id: bytes | None = None,
    chunk: Chunk | None = None,
) -> bytes:
    """Sign and frame an already-encoded body (as buffer parts) for ``channel``."""
    digest = hashlib.sha256()
    for part in body:
        digest.update(part)
    ts = now_ms() if ts_ms is None else ts_ms
    header = Header(
        v=PROTOCOL_VERSION,
        type=type_,
        id=new_message_id(ts) if msg_id is None else msg_id,
        sender=sender,
        key_id=signer.key_id,
        ts_ms=ts,
        round=round,
        body_digest=digest.digest(),
        chunk=chunk,
        sig_alg=signer.alg,
    )
    return encode_envelope(header, body, signer.sign(header.signing_bytes(channel)))


def seal(
    body: Body,
    signer: Signer,
    channel: Channel,
    *,
    sender: str,
    round: int | None = None,
    ts_ms: int | None = None,
    msg_id: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Encode ``body`` and sign it into one record for ``channel``; ``LimitError`` if it needs chunking."""
    parts = wire.pack_parts(body.to_body())
    size = sum(len(p) for p in parts)
    if size > limits.chunk_body_bytes:
        raise LimitError(
            f"body of {size} bytes exceeds {limits.chunk_body_bytes}; use seal_chunked", field="body"
        )
    return seal_parts(
        body.TYPE, parts, signer, channel, sender=sender, round=round, ts_ms=ts_ms, msg_id=msg_id
    )


def _limits(limits: Limits) -> wire.WireLimits:
    return wire.WireLimits(
        max_bytes=limits.max_record_bytes,
        max_depth=2,  # envelope map -> chunk map
        max_array_len=0,  # the envelope holds no arrays
        max_map_len=16,  # a few over 12, so an unexpected key is named rather than just counted
        max_str_len=256,
        max_bin_len=limits.max_record_bytes,
    )


def _bin(raw: dict[str, object], key: str, size: int, where: str = "") -> bytes:
    value = raw[key]
    if not isinstance(value, memoryview) or len(value) != size:
        raise SchemaError(f"expected bin of {size} bytes", field=f"{where}{key}")
    return bytes(value)


def _uint(raw: dict[str, object], key: str, *, lo: int = 0, hi: int = _UINT64_MAX, where: str = "") -> int:
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise SchemaError(f"expected an integer in [{lo}, {hi}]", field=f"{where}{key}")
    return value


def _chunk(value: object, limits: Limits) -> Chunk | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SchemaError("expected nil or a map of stream, index, count", field="chunk")
    wire.check_keys(value, CHUNK_FIELDS, "chunk")
    stream = _bin(value, "stream", 16, "chunk.")
    if not is_uuid7(stream):
        raise SchemaError("stream must be a UUIDv7", field="chunk.stream")
    index = _uint(value, "index", where="chunk.")
    count = _uint(value, "count", lo=1, hi=limits.max_chunks, where="chunk.")
    if index >= count:
        raise SchemaError(f"index {index} is not below count {count}", field="chunk.index")
    return Chunk(stream, index, count)


def parse_envelope(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Parse and type-check every envelope field (§6 steps 2-4). No crypto, clock or body."""
    raw = wire.unpack(data, _limits(limits), root="")
    if not isinstance(raw, dict):
        raise SchemaError(f"envelope must be a map, got {type(raw).__name__}", field="$")
    # The version decides what the other fields mean, so it is checked first.
    if "v" not in raw:
        raise SchemaError("required field is missing", field="v")
    v = raw["v"]
    if not isinstance(v, int) or isinstance(v, bool):
        raise SchemaError("expected an integer", field="v")
    if v not in SUPPORTED_VERSIONS:
        raise VersionError(f"protocol version {v} is not supported", field="v")
    wire.check_keys(raw, FIELDS)
    # Then every value, in the order of FIELDS.
    type_ = raw["type"]
    if not isinstance(type_, str) or not _TYPE_PATTERN.fullmatch(type_):
        raise SchemaError("expected a lower_snake_case type name", field="type")
    msg_id = _bin(raw, "id", 16)
    if not is_uuid7(msg_id):
        raise SchemaError("id must be a UUIDv7", field="id")
    sender = raw["sender"]
    if not isinstance(sender, str) or not ID_PATTERN.fullmatch(sender):
        raise SchemaError("expected an id string", field="sender")
    kid = _bin(raw, "key_id", KEY_ID_BYTES)
    ts_ms = _uint(raw, "ts_ms")
    round_ = None if raw["round"] is None else _uint(raw, "round", hi=_INT64_MAX)
    body_digest = _bin(raw, "body_digest", 32)
    body = raw["body"]
    if not isinstance(body, memoryview):
        raise SchemaError("expected bin", field="body")
    chunk = _chunk(raw["chunk"], limits)
    sig_alg = raw["sig_alg"]
    if not isinstance(sig_alg, str) or sig_alg != ML_DSA_65:
        raise SchemaError(f"signature algorithm must be {ML_DSA_65}", field="sig_alg")
    sig = _bin(raw, "sig", MLDSA65_SIGNATURE_BYTES)
    header = Header(
        v=v,
        type=type_,
        id=msg_id,
        sender=sender,
        key_id=kid,
        ts_ms=ts_ms,
        round=round_,
        body_digest=body_digest,
        chunk=chunk,
        sig_alg=sig_alg,
    )
    return Envelope(header, body, sig)
