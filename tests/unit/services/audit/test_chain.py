"""The hash chain on its own: linking, checkpoints, and naming the first broken seq."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qflare.crypto import generate_key, signature_backend
from services.audit.chain import CHECKPOINT, Entry, Event, genesis, make_entry, verify

STREAM = "t-unit."


def _event(i: int, type: str = "round.opened") -> Event:
    return Event(
        time_ms=1_700_000_000_000 + i,
        actor="scheduler",
        type=type,
        outcome="info",
        source_topic="qflare.rounds",
        source_partition=0,
        source_offset=i,
        round=i,
        job="job-1",
        detail={"n": i, "devices": ["a", "b"]},
    )


@pytest.fixture
def key_pair() -> tuple[bytes, object]:
    key = generate_key()
    return key.public_key, key.signer()


def _chain(n: int, signer: object, every: int = 4) -> list[Entry]:
    out: list[Entry] = []
    head = (0, genesis(STREAM))
    for i in range(n):
        entry = make_entry(head, _event(i))
        out.append(entry)
        head = (entry.seq, entry.hash)
        if entry.seq % every == 0:
            ev = replace(_event(i, CHECKPOINT), detail={"upto_seq": entry.seq})
            mark = make_entry(head, ev, sign=signer.sign, stream=STREAM)  # type: ignore[attr-defined]
            out.append(mark)
            head = (mark.seq, mark.hash)
    return out


def _checker(public: bytes):  # type: ignore[no-untyped-def]
    backend = signature_backend()
    return lambda message, sig: backend.verify(public, message, sig)


def test_intact_chain_verifies(key_pair: tuple[bytes, object]) -> None:
    public, signer = key_pair
    entries = _chain(9, signer)
    verdict = verify(STREAM, entries, _checker(public))
    assert verdict.ok, verdict
    assert verdict.entries == len(entries) and verdict.checkpoints == 2
    assert entries[-1].event.type != CHECKPOINT
    assert "OK" in verdict.line(STREAM)


def test_modified_entry_is_named(key_pair: tuple[bytes, object]) -> None:
    public, signer = key_pair
    entries = _chain(10, signer)
    entries[6] = replace(entries[6], event=replace(entries[6].event, reason="tampered"))
    verdict = verify(STREAM, entries, _checker(public))
    assert not verdict.ok and verdict.broken_at == 7
    assert "BROKEN at seq 7" in verdict.line(STREAM)


def test_deleted_entry_is_named(key_pair: tuple[bytes, object]) -> None:
    public, signer = key_pair
    entries = _chain(10, signer)
    del entries[3]
    verdict = verify(STREAM, entries, _checker(public))
    assert not verdict.ok and verdict.broken_at == 4 and "missing" in verdict.problem


def test_reordered_entries_are_named(key_pair: tuple[bytes, object]) -> None:
    public, signer = key_pair
    entries = _chain(10, signer)
    a, b = entries[1], entries[2]
    # Swap contents but keep the seq numbers: the link from seq 2 breaks.
    entries[1] = replace(b, seq=a.seq)
    entries[2] = replace(a, seq=b.seq)
    verdict = verify(STREAM, entries, _checker(public))
    assert not verdict.ok and verdict.broken_at == 2


def test_rehashed_forgery_fails_the_checkpoint(key_pair: tuple[bytes, object]) -> None:
    """Someone who recomputes every digest and hash still cannot sign the checkpoint."""
    public, signer = key_pair
    entries = _chain(4, signer)
    head = (0, genesis(STREAM))
    forged: list[Entry] = []
    for e in entries:
        ev = e.event if e.event.type == CHECKPOINT else replace(e.event, actor="mallory")
        new = make_entry(head, ev)
        forged.append(replace(new, signature=e.signature))
        head = (new.seq, new.hash)
    verdict = verify(STREAM, forged, _checker(public))
    assert not verdict.ok and verdict.broken_at == 5 and "signature" in verdict.problem


def test_digest_is_canonical() -> None:
    a = replace(_event(1), detail={"x": 1, "y": 2})
    b = replace(_event(1), detail={"y": 2, "x": 1})
    assert a.digest() == b.digest()
    assert a.digest() != replace(a, round=2).digest()
