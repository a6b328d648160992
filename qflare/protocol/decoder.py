"""Receiving: limits, structure, signature, freshness, de-duplication, then the body.

The order is the point. Nothing is allocated beyond what the limits allow,
nothing is trusted before the signature verifies, and the body (the only part
that may be megabytes) is parsed last. Every rejection is a ``ProtocolError``
subclass naming the field, and is counted in ``Decoder.rejected`` by reason.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from qflare.clock import now_ms
from qflare.crypto.backends import signature_backend
from qflare.crypto.base import ML_DSA_65, SignatureBackend, key_id
from qflare.errors import (
    DigestMismatchError,
    KeyFormatError,
    KeyMismatchError,
    LimitError,
    ProtocolError,
    ReplayError,
    SchemaError,
    SignatureError,
    StaleMessageError,
    UnknownKeyError,
)
from qflare.protocol import wire
from qflare.protocol.body import Body
from qflare.protocol.channel import Channel, check_deployment
from qflare.protocol.envelope import Header, parse_envelope
from qflare.protocol.limits import DEFAULT_LIMITS, Limits
from qflare.protocol.messages import BODY_TYPES


@dataclass(frozen=True, slots=True)
class KnownKey:
    """A public key and the sender it belongs to."""

    owner: str
    public_key: bytes
    alg: str = ML_DSA_65


#: key_id -> KnownKey, or None when the key is unknown (or revoked).
KeyLookup = Callable[[bytes], KnownKey | None]


class KeyRing:
    """A plain in-memory ``KeyLookup``; services fill it from the ``qflare.devices`` topic."""

    def __init__(self) -> None:
        self._keys: dict[bytes, KnownKey] = {}

    def add(self, owner: str, public_key: bytes, alg: str = ML_DSA_65) -> bytes:
        kid = key_id(public_key)
        self._keys[kid] = KnownKey(owner, bytes(public_key), alg)
        return kid

    def remove(self, kid: bytes) -> None:
        self._keys.pop(kid, None)

    def __call__(self, kid: bytes) -> KnownKey | None:
        return self._keys.get(kid)

    def __len__(self) -> int:
        return len(self._keys)


class ReplayCache:
    """Bounded memory of accepted (sender, id) pairs.

    Entries older than ``ttl_ms`` are dropped: by then the freshness window
    rejects the message anyway, so forgetting it reopens nothing. Past
    ``max_entries`` the oldest entry goes first; size it above the number of
    messages a consumer accepts per freshness window.
    """

    def __init__(self, max_entries: int = 1_000_000, ttl_ms: int | None = None) -> None:
        self.max_entries = max_entries
        self.ttl_ms = ttl_ms
        self._seen: OrderedDict[tuple[str, bytes], int] = OrderedDict()

    def __contains__(self, key: tuple[str, bytes]) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: tuple[str, bytes], now: int) -> None:
        self._seen[key] = now
        self._seen.move_to_end(key)
        if self.ttl_ms is not None:
            while self._seen:
                oldest, seen_at = next(iter(self._seen.items()))
                if now - seen_at <= self.ttl_ms:
                    break
                del self._seen[oldest]
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Message:
    """A verified, decoded message. For a reassembled stream, ``header.id`` is the stream id."""

    header: Header
    body: Body
    #: The deployment and topic the signature was verified for.
    channel: Channel


class Decoder:
    """Turns records into ``Message``s, or raises a typed ``ProtocolError``.

    ``max_age_ms=None`` disables the age check: use it for compacted topics,
    which are read from the beginning and legitimately hold old records, and
    for consumers that re-read a backlog after a restart.

    ``deployment`` is this receiver's deployment id; with the topic each record
    was read from it is the channel every signature must have been made for.
    """

    def __init__(
        self,
        keys: KeyLookup,
        *,
        deployment: str,
        limits: Limits = DEFAULT_LIMITS,
        max_age_ms: int | None = 10 * 60_000,
        max_skew_ms: int = 60_000,
        allowed_types: Collection[str] | None = None,
        self_signed: Collection[str] = (),
        check_finite: bool = True,
        verifier: SignatureBackend | None = None,
        replay: ReplayCache | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.keys = keys
        self.deployment = check_deployment(deployment)
        self.limits = limits
        self.max_age_ms = max_age_ms
        self.max_skew_ms = max_skew_ms
        self.allowed_types = frozenset(BODY_TYPES if allowed_types is None else allowed_types)
        self.self_signed = frozenset(self_signed)
        self.check_finite = check_finite
        self.verifier = signature_backend() if verifier is None else verifier
        ttl = None if max_age_ms is None else max_age_ms + max_skew_ms
        # Explicit None check: an empty cache is falsy (it has __len__).
        self.replay = ReplayCache(ttl_ms=ttl) if replay is None else replay
        self.clock = clock
        self.rejected: Counter[str] = Counter()

    def decode(self, record: bytes | bytearray | memoryview, topic: str) -> Message:
        """Verify and decode ``record``, read from ``topic`` (the full name, prefix included)."""
        channel = Channel(self.deployment, topic)
        try:
            return self._decode(record, channel)
        except ProtocolError as exc:
            self.rejected[exc.reason] += 1
            raise

    def _decode(self, record: bytes | bytearray | memoryview, channel: Channel) -> Message:
        if len(record) > self.limits.max_record_bytes:
            raise LimitError(
                f"record of {len(record)} bytes exceeds {self.limits.max_record_bytes}", field="$"
            )
        env = parse_envelope(record, self.limits)
        head = env.header
        if head.type not in self.allowed_types:
            raise SchemaError(f"type {head.type!r} is not accepted here", field="type")
        if head.chunk is not None and head.type != "model_chunk":
            raise SchemaError("only model_chunk messages may carry chunk", field="chunk")
        if head.chunk is None and head.type == "model_chunk":
            raise SchemaError("a model_chunk message needs chunk", field="chunk")
        known = self.keys(head.key_id)
        early_body: Body | None = None
        if known is None and head.type in self.self_signed:
            # Enrolment: the key is in the body. Check the digest first so the
            # body we trust for the key is the one the signature will cover.
            self._check_digest(head, env.body)
            early_body = self._body(head.type, env.body)
            claim = early_body.claimed_key()
            if claim is not None:
                if key_id(claim[1]) != head.key_id:
                    raise KeyMismatchError(
                        "key_id is not the hash of the enclosed public key", field="key_id"
                    )
                known = KnownKey(claim[0], claim[1])
        if known is None:
            raise UnknownKeyError(head.key_id)
        if known.owner != head.sender:
            raise KeyMismatchError(
                f"key {head.key_id.hex()} does not belong to {head.sender!r}", field="sender"
            )
        if known.alg != head.sig_alg:
            raise SignatureError(f"key is {known.alg}, message says {head.sig_alg}", field="sig_alg")
        try:
            valid = self.verifier.verify(known.public_key, head.signing_bytes(channel), env.sig)
        except KeyFormatError as exc:
            raise SignatureError(f"unusable public key: {exc}", field="key_id") from exc
        if not valid:
            # A record copied from another topic or deployment lands here too: the
            # channel is signed, not sent, so it cannot be told apart from a bad signature.
            raise SignatureError(
                f"signature does not verify for deployment {channel.deployment!r}, topic {channel.topic!r}",
                field="sig",
            )
        if early_body is None:
            self._check_digest(head, env.body)
        self._check_fresh(head)
        return self.accept(head, env.body, channel, body=early_body)

    def _check_digest(self, head: Header, body: memoryview) -> None:
        if not hmac.compare_digest(hashlib.sha256(body).digest(), head.body_digest):
            raise DigestMismatchError("body does not match the signed body_digest", field="body")

    def _check_fresh(self, head: Header) -> None:
        now = self.clock()
        if head.ts_ms - now > self.max_skew_ms:
            raise StaleMessageError(f"ts_ms is {head.ts_ms - now} ms in the future", field="ts_ms")
        if self.max_age_ms is not None and now - head.ts_ms > self.max_age_ms:
            raise StaleMessageError(f"ts_ms is {now - head.ts_ms} ms old", field="ts_ms")

    def _body(self, type_: str, raw: memoryview | bytes | bytearray) -> Body:
        limits = wire.WireLimits(
            max_bytes=self.limits.max_message_bytes,
            max_depth=self.limits.max_depth,
            max_array_len=self.limits.max_array_len,
            max_map_len=self.limits.max_map_len,
            max_str_len=self.limits.max_str_len,
            max_bin_len=self.limits.max_message_bytes,
        )
        body = BODY_TYPES[type_].from_body(wire.unpack(raw, limits, root="body"))
        if self.check_finite:
            for i, tensor in enumerate(body.all_tensors()):
                tensor.check_finite(f"body.tensors[{i}]")
        return body

    def accept(
        self,
        head: Header,
        raw: memoryview | bytes | bytearray,
        channel: Channel,
        *,
        body: Body | None = None,
    ) -> Message:
        """De-duplicate on (sender, id), decode the body, and remember the id.

        Public for the reassembler, which hands over a verified stream as one body.
        """
        key = (head.sender, head.id)
        if key in self.replay:
            raise ReplayError(
                f"message {head.id.hex()} from {head.sender!r} was already accepted", field="id"
            )
        if head.type not in BODY_TYPES:
            raise SchemaError(f"unknown message type {head.type!r}", field="type")
        decoded = body if body is not None else self._body(head.type, raw)
        # Remembered only once fully accepted, so a rejected message cannot
        # block a later valid copy of itself.
        self.replay.add(key, self.clock())
        return Message(head, decoded, channel)

    def count(self, exc: ProtocolError) -> None:
        """Count a rejection raised outside ``decode`` (e.g. by the reassembler)."""
        self.rejected[exc.reason] += 1
