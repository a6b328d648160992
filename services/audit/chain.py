"""The hash chain: canonical digests, links, checkpoint signatures and verification. Pure code.

``event_digest`` = SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of an entry's
fields; ``hash`` = SHA-256(``DOMAIN`` || prev_hash || seq as 8 big-endian bytes || event_digest).
The first entry of a stream links to ``genesis(stream)``. A checkpoint's signature covers
``CHECKPOINT_DOMAIN`` || stream || 0x00 || seq || hash, so it vouches for every entry up to it.

Checkpoints live in the chain, so they cannot show that entries after the last one were deleted
or rewritten. Signed heads (``services.audit.heads``) live outside it: ``against_heads`` checks
that the chain still passes through every head the audit service signed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

DOMAIN = b"qflare.audit.chain.v1"
CHECKPOINT_DOMAIN = b"qflare.audit.checkpoint.v1"
CHECKPOINT = "audit.checkpoint"
#: Entry types the audit service writes into its own chain start with this; nobody else may use it.
RESERVED_PREFIX = "audit."
OUTCOMES = frozenset({"accepted", "rejected", "info"})


@dataclass(frozen=True, slots=True)
class Event:
    """What one chain entry says, before it is linked."""

    time_ms: int
    actor: str
    type: str
    outcome: str
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str = ""
    round: int | None = None
    job: str | None = None
    subject: str | None = None
    ref_id: bytes | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> bytes:
        fields = {
            "time_ms": self.time_ms,
            "actor": self.actor,
            "type": self.type,
            "outcome": self.outcome,
            "reason": self.reason,
            "round": self.round,
            "job": self.job,
            "subject": self.subject,
            "ref_id": None if self.ref_id is None else self.ref_id.hex(),
            "source": [self.source_topic, self.source_partition, self.source_offset],
            "detail": self.detail,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()


@dataclass(frozen=True, slots=True)
class Entry:
    """A linked entry, as stored."""

    seq: int
    prev_hash: bytes
    event_digest: bytes
    hash: bytes
    event: Event
    signature: bytes | None = None


def genesis(stream: str) -> bytes:
    return hashlib.sha256(DOMAIN + b"genesis" + stream.encode()).digest()


def link(prev_hash: bytes, seq: int, event_digest: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + prev_hash + seq.to_bytes(8, "big") + event_digest).digest()


def checkpoint_message(stream: str, seq: int, entry_hash: bytes) -> bytes:
    return CHECKPOINT_DOMAIN + stream.encode() + b"\x00" + seq.to_bytes(8, "big") + entry_hash


def make_entry(
    prev: tuple[int, bytes], event: Event, *, sign: Callable[[bytes], bytes] | None = None, stream: str = ""
) -> Entry:
    """Link ``event`` after ``prev`` (seq, hash); with ``sign``, sign it as a checkpoint of ``stream``."""
    seq = prev[0] + 1
    digest = event.digest()
    entry_hash = link(prev[1], seq, digest)
    signature = None if sign is None else sign(checkpoint_message(stream, seq, entry_hash))
    return Entry(seq, prev[1], digest, entry_hash, event, signature)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    entries: int
    checkpoints: int
    #: The first sequence number where the chain breaks, and why.
    broken_at: int | None = None
    problem: str = ""
    #: The latest signed head the chain was compared with, described; "" when none was.
    head: str = ""
    #: Entries newer than that head (appended since it was published): not yet vouched for.
    unvouched: int = 0

    def line(self, stream: str) -> str:
        name = stream or "(no prefix)"
        if not self.ok:
            return f"audit chain {name}: BROKEN at seq {self.broken_at}: {self.problem}"
        text = (
            f"audit chain {name}: OK, {self.entries} entries, {self.checkpoints} signed checkpoints verified"
        )
        if self.head:
            text += f", matches the signed head {self.head}"
        if self.unvouched:
            text += f" ({self.unvouched} newer entries not yet covered by a head)"
        return text


@dataclass(frozen=True, slots=True)
class Vouched:
    """A point the chain must pass through: a signed head's seq and hash, and where it was read."""

    seq: int
    hash: bytes
    where: str
    time_ms: int

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.time_ms / 1000, UTC).isoformat(timespec="seconds")
        return f"at seq {self.seq} of {when} ({self.where})"


def verify(
    stream: str,
    entries: Iterable[Entry],
    check_signature: Callable[[bytes, bytes], bool],
) -> Verdict:
    """Walk the chain in stored seq order; the first inconsistency names its seq.

    A modified entry fails its digest; a deleted one leaves a gap in seq; a moved one
    fails the link to its predecessor. ``check_signature(message, signature)`` checks a
    checkpoint against the audit service's public key.
    """
    expected_seq, prev = 1, genesis(stream)
    count = signed = 0
    for entry in entries:
        if entry.seq != expected_seq:
            if entry.seq > expected_seq:
                return _broken(count, signed, expected_seq, f"entry missing (next stored is {entry.seq})")
            return _broken(count, signed, entry.seq, "entry out of order or repeated")
        if entry.event.digest() != entry.event_digest:
            return _broken(count, signed, entry.seq, "entry content does not match its digest (modified)")
        if entry.prev_hash != prev:
            return _broken(count, signed, entry.seq, "prev_hash does not match the previous entry")
        if link(prev, entry.seq, entry.event_digest) != entry.hash:
            return _broken(count, signed, entry.seq, "hash does not match (modified)")
        if entry.event.type == CHECKPOINT:
            message = checkpoint_message(stream, entry.seq, entry.hash)
            if entry.signature is None or not check_signature(message, entry.signature):
                return _broken(count, signed, entry.seq, "checkpoint signature does not verify")
            signed += 1
        elif entry.signature is not None:
            return _broken(count, signed, entry.seq, "signature on an entry that is not a checkpoint")
        prev, expected_seq = entry.hash, expected_seq + 1
        count += 1
    return Verdict(True, count, signed)


def _broken(count: int, signed: int, seq: int, problem: str) -> Verdict:
    return Verdict(False, count, signed, seq, problem)


def against_heads(
    stream: str, entries: Sequence[Entry], verdict: Verdict, heads: Sequence[Vouched]
) -> Verdict:
    """``verdict`` (of ``verify``) once the chain is also checked against every signed head.

    A head at seq S with hash H says the chain once held S entries ending in H. Fewer entries now
    means the tail was deleted (or the chain emptied); another hash at S means entries up to S were
    rewritten, links and all, which the chain alone cannot show after its last checkpoint. The first
    bad seq is named as precisely as the signed points allow: the entry after the last signed point
    (checkpoint or head) that still matches.
    """
    if not heads:
        return verdict
    latest = max(heads, key=lambda v: v.seq)
    if not verdict.ok:
        return replace(verdict, head=latest.describe())  # the chain itself names an earlier break
    hashes = {e.seq: e.hash for e in entries}
    hashes[0] = genesis(stream)
    good = [e.seq for e in entries if e.event.type == CHECKPOINT]
    length = verdict.entries
    for point in sorted(heads, key=lambda v: v.seq):
        if point.seq > length:
            if length == 0:
                problem = (
                    f"the chain is empty, but the signed head {latest.describe()} says it held {latest.seq}"
                )
            else:
                problem = (
                    f"entries {length + 1}..{latest.seq} are missing: the chain ends at seq {length}, "
                    f"but the signed head {latest.describe()} says it reached seq {latest.seq} (tail deleted)"
                )
            return Verdict(False, length, verdict.checkpoints, length + 1, problem, head=latest.describe())
        if hashes.get(point.seq) != point.hash:
            first = max((seq for seq in good if seq < point.seq), default=0) + 1
            what = f"entry {first} was" if first == point.seq else f"entries {first}..{point.seq} were"
            problem = f"{what} rewritten: the hash at seq {point.seq} differs from the signed head "
            problem += point.describe()
            return Verdict(False, length, verdict.checkpoints, first, problem, head=latest.describe())
        good.append(point.seq)
    return replace(verdict, head=latest.describe(), unvouched=length - latest.seq)
