"""Signed chain heads: what leaves the database so that a truncated chain is noticed.

After each committed batch (at most once per ``head_interval_s``) the audit service signs an
``audit_head`` (stream, last seq, its hash, time) with its own key, appends it to a file an operator
can keep on other storage (one JSON line per head, the signed record in base64), and publishes it to
the compacted ``qflare.audit.heads`` topic. A chain in PostgreSQL can then be checked for more than
order and content: it must still hold every head ever vouched for, at the same hash.

Heads are believed only under a key pinned by fingerprint (``pinned_decoder``), never under whatever
public key a directory holds; records that do not verify are counted and otherwise ignored, so a
forged head can neither vouch for a shortened chain nor stop verification.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from qflare.crypto import KeyFile, read_key
from qflare.crypto.base import fingerprint
from qflare.errors import KeyFileError, ProtocolError, QflareError, Reason, ReplayError
from qflare.identity import Identity
from qflare.kafka import KafkaSettings, make_consumer, partitions, read_to_end
from qflare.protocol import Decoder, KeyRing, seal
from qflare.protocol.control import AuditHead
from qflare.protocol.limits import DEFAULT_LIMITS, Limits
from qflare.protocol.topics import TopicSpec
from services.audit.chain import Vouched
from services.audit.store import AuditStore


class ChainMismatchError(QflareError):
    """The chain in PostgreSQL is shorter than, or differs from, a head the audit service signed."""

    reason = Reason.CHAIN_MISMATCH


def head_key(stream: str) -> bytes:
    """The record key on the heads topic: one per chain, so compaction keeps each chain's latest."""
    return (stream or "-").encode()


def normalise_fingerprint(text: str) -> str:
    """``SHA256:ab:cd…``, ``ab:cd…`` or ``abcd…`` (any case) as 64 lowercase hex digits."""
    raw = text.strip()
    if raw.upper().startswith("SHA256:"):
        raw = raw[len("SHA256:") :]
    raw = raw.replace(":", "").lower()
    if len(raw) != 64 or any(c not in "0123456789abcdef" for c in raw):
        raise KeyFileError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)", field="key_fingerprint")
    return raw


def pinned_key(path: Path, pinned: str) -> KeyFile:
    """The public key at ``path``, refused unless its fingerprint is ``pinned``."""
    key = read_key(path, check_permissions=False)
    if fingerprint(key.public_key).replace(":", "") != normalise_fingerprint(pinned):
        raise KeyFileError(
            f"{path} has fingerprint SHA256:{fingerprint(key.public_key)}, not the pinned "
            f"SHA256:{pinned_display(pinned)}: refusing it",
            field="key_fingerprint",
        )
    return key


def check_own_key(identity: Identity, pinned: str) -> None:
    """Refuse to run with a key of one's own other than the pinned one (when one is pinned)."""
    if pinned and fingerprint(identity.key.public_key).replace(":", "") != normalise_fingerprint(pinned):
        raise KeyFileError(
            f"the {identity.name} key has fingerprint SHA256:{fingerprint(identity.key.public_key)}, "
            f"not the pinned SHA256:{pinned_display(pinned)}",
            field="key_fingerprint",
        )


def pinned_display(pinned: str) -> str:
    raw = normalise_fingerprint(pinned)
    return ":".join(raw[i : i + 2] for i in range(0, len(raw), 2))


def pinned_decoder(owner: str, key: KeyFile, deployment: str, limits: Limits = DEFAULT_LIMITS) -> Decoder:
    """A decoder that believes ``audit_head`` records signed by ``key`` as ``owner``, and nothing else."""
    ring = KeyRing()
    ring.add(owner, key.public_key, key.alg)
    return Decoder(
        ring, deployment=deployment, allowed_types={AuditHead.TYPE}, max_age_ms=None, limits=limits
    )


@dataclass(frozen=True, slots=True)
class SignedHead:
    head: AuditHead
    #: Where it was read: ``<topic>@<offset>`` or ``<file>:<line>``.
    where: str


@dataclass
class Heads:
    """The verified heads of one stream found in one source, and how many records were refused."""

    found: list[SignedHead]
    refused: int = 0
    source: str = ""

    @property
    def latest(self) -> SignedHead | None:
        return max(self.found, key=lambda h: h.head.seq, default=None)


def _accept(decoder: Decoder, topic: str, stream: str, raw: bytes, where: str, out: Heads) -> bool:
    """Add the head in ``raw`` (signed for ``topic``) to ``out`` when it verifies and is about ``stream``."""
    try:
        body = decoder.decode(raw, topic).body
    except ReplayError:
        return False  # the same signed head seen twice (a re-send)
    except ProtocolError:
        out.refused += 1
        return False
    if not isinstance(body, AuditHead) or body.stream != stream:
        out.refused += 1
        return False
    out.found.append(SignedHead(body, where))
    return True


def read_file(path: Path, stream: str, decoder: Decoder, topic: str) -> Heads:
    """The latest head of ``stream`` in a head file that verifies; refused lines are counted.

    ``topic`` is the heads topic the records were signed for (each line is a copy of one).

    Lines are tried from the highest claimed seq down, so a forged line (or garbage) never hides
    the real latest head, and a long file costs one signature check, not one per line.
    """
    out = Heads([], source=str(path))
    # (claimed seq, line number, byte offset): the records are read again only when tried.
    candidates: list[tuple[int, int, int]] = []
    with path.open("rb") as handle:
        offset = 0
        for number, line in enumerate(handle, 1):
            try:
                doc = json.loads(line)
                if doc["stream"] == stream:
                    candidates.append((int(doc["seq"]), number, offset))
            except (ValueError, KeyError, TypeError):
                out.refused += 1
            offset += len(line)
        for _, number, at in sorted(candidates, reverse=True):
            handle.seek(at)
            try:
                raw = base64.b64decode(json.loads(handle.readline())["record"], validate=True)
            except (ValueError, KeyError, TypeError, binascii.Error):
                out.refused += 1
                continue
            if _accept(decoder, topic, stream, raw, f"{path}:{number}", out):
                break
    return out


async def read_topic(
    kafka: KafkaSettings, spec: TopicSpec, stream: str, decoder: Decoder, *, scan_records: int = 1000
) -> Heads:
    """The verified heads of ``stream`` among the last ``scan_records`` records of each partition.

    The newest head is the last record its writer produced; compaction keeps it, and reading only
    the tail keeps a long-lived topic (one head per interval until a segment is compacted) cheap.
    """
    out = Heads([], source=spec.name)
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        parts = partitions(spec)
        consumer.assign(parts)
        first = await consumer.beginning_offsets(parts)
        end = await consumer.end_offsets(parts)
        for tp in parts:
            consumer.seek(tp, max(first[tp], end[tp] - scan_records))
        async for record in read_to_end(consumer, timeout_s=30):
            if record.key != head_key(stream):
                continue
            if record.value is None:
                out.refused += 1  # a tombstone deletes nothing a verifier believes
                continue
            _accept(decoder, spec.name, stream, record.value, f"{record.topic}@{record.offset}", out)
    finally:
        await consumer.stop()
    return out


class HeadWriter:
    """Signs heads with the audit service's key; appends each to the file, then publishes it."""

    def __init__(
        self,
        identity: Identity,
        stream: str,
        spec: TopicSpec,
        producer: AIOKafkaProducer,
        path: Path | None,
    ) -> None:
        self.identity = identity
        self.stream = stream
        self.spec = spec
        self.producer = producer
        self.path = path
        self.published: tuple[int, bytes] | None = None

    async def publish(self, seq: int, entry_hash: bytes, time_ms: int) -> None:
        head = AuditHead(self.stream, seq, entry_hash, time_ms)
        record = seal(head, self.identity.signer, self.spec.channel, sender=self.identity.name)
        if self.path is not None:
            append_line(self.path, head, record)
        await self.producer.send_and_wait(self.spec.name, record, key=head_key(self.stream))
        self.published = (seq, entry_hash)


def append_line(path: Path, head: AuditHead, record: bytes) -> None:
    """Append one head to the head file: readable fields for people, the signed record for verifiers."""
    line = {
        "stream": head.stream,
        "seq": head.seq,
        "hash": head.hash.hex(),
        "time_ms": head.time_ms,
        "record": base64.b64encode(record).decode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write of one line with O_APPEND: concurrent writers never interleave within a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def vouched(sources: Iterable[Heads]) -> list[Vouched]:
    """Every verified head of every source, as points the chain must pass through."""
    return [
        Vouched(h.head.seq, h.head.hash, h.where, h.head.time_ms) for source in sources for h in source.found
    ]


async def check_published(
    store: AuditStore, kafka: KafkaSettings, spec: TopicSpec, identity: Identity, path: Path | None, scan: int
) -> tuple[int, bytes] | None:
    """The latest head this service published, once the stored chain is shown to still hold it.

    Run at start, before anything is appended or published: a chain truncated or rewritten while
    the service was down must not be extended, nor vouched for by a fresh head. Raises
    ``ChainMismatchError`` (not transient: an operator has to look).
    """
    decoder = pinned_decoder(identity.name, identity.key, spec.deployment, kafka.limits)
    sources = [await read_topic(kafka, spec, store.stream, decoder, scan_records=scan)]
    if path is not None and path.exists():
        sources.append(read_file(path, store.stream, decoder, spec.name))
    points = vouched(sources)
    if not points:
        return None
    latest = max(points, key=lambda v: v.seq)
    if await store.hash_at(latest.seq) != latest.hash:
        length = (await store.head())[0]
        what = "is shorter than" if length < latest.seq else "differs from"
        raise ChainMismatchError(
            f"the audit chain {store.stream or '(no prefix)'} (seq {length}) {what} its signed head "
            f"{latest.describe()}: run `qflare audit verify` before restarting the audit service"
        )
    return latest.seq, latest.hash
