"""Signed heads without servers: the chain against its heads, head files, and key pinning."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from qflare.crypto import KeyFile, generate_key, signature_backend, write_key
from qflare.errors import KeyFileError
from qflare.protocol import seal, topics
from qflare.protocol.channel import DEFAULT_DEPLOYMENT
from qflare.protocol.control import AuditHead
from services.audit.chain import (
    CHECKPOINT,
    Entry,
    Event,
    Verdict,
    Vouched,
    against_heads,
    genesis,
    make_entry,
    verify,
)
from services.audit.heads import append_line, normalise_fingerprint, pinned_decoder, pinned_key, read_file

STREAM = "t-unit."
#: The channel every head in these tests is signed for, and read back from.
HEADS = topics(STREAM, deployment=DEFAULT_DEPLOYMENT).audit_heads


def _event(i: int, type: str = "device.revoked") -> Event:
    return Event(
        1_700_000_000_000 + i, "registry", type, "info", "qflare.audit.events", 0, i, subject=f"d{i}"
    )


def _chain(key: KeyFile, n: int, every: int = 4) -> list[Entry]:
    out: list[Entry] = []
    head = (0, genesis(STREAM))
    for i in range(n):
        out.append(make_entry(head, _event(i)))
        head = (out[-1].seq, out[-1].hash)
        if out[-1].seq % every == 0:
            out.append(make_entry(head, _event(i, CHECKPOINT), sign=key.signer().sign, stream=STREAM))
            head = (out[-1].seq, out[-1].hash)
    return out


def _check(key: KeyFile, entries: list[Entry], heads: list[Vouched]) -> Verdict:
    backend = signature_backend()
    walked = verify(STREAM, entries, lambda m, s: backend.verify(key.public_key, m, s))
    return against_heads(STREAM, entries, walked, heads)


def _head(entries: list[Entry], seq: int) -> Vouched:
    return Vouched(seq, entries[seq - 1].hash if seq else genesis(STREAM), "test", 1_700_000_000_000)


@pytest.fixture(scope="module")
def key() -> KeyFile:
    return generate_key()


def test_intact_chain_matches_its_head_and_counts_newer_entries(key: KeyFile) -> None:
    entries = _chain(key, 9)  # 11 entries, checkpoints at seq 5 and 9
    verdict = _check(key, entries, [_head(entries, 10)])
    assert verdict.ok and verdict.unvouched == 1
    assert "matches the signed head at seq 10" in verdict.line(STREAM)
    assert _check(key, [], [_head([], 0)]).ok  # an empty chain that was always empty


def test_deleted_tail_is_broken_at_the_first_missing_seq(key: KeyFile) -> None:
    entries = _chain(key, 9)
    head = _head(entries, 11)
    assert _check(key, entries[:7], []).ok  # the chain alone cannot tell
    verdict = _check(key, entries[:7], [head])
    assert not verdict.ok and verdict.broken_at == 8 and "entries 8..11 are missing" in verdict.problem
    emptied = _check(key, [], [head])
    assert not emptied.ok and emptied.broken_at == 1 and "the chain is empty" in emptied.problem


def _rewritten(entries: list[Entry], first: int) -> list[Entry]:
    out = entries[: first - 1]
    prev = (first - 1, entries[first - 2].hash)
    for old in entries[first - 1 :]:
        out.append(make_entry(prev, replace(old.event, reason="nothing to see")))
        prev = (out[-1].seq, out[-1].hash)
    return out


def test_rewritten_and_relinked_entries_are_named_from_the_last_signed_point(key: KeyFile) -> None:
    entries = _chain(key, 9)
    rewritten = _rewritten(entries, 11)
    assert _check(key, rewritten, []).ok  # links recomputed after the last checkpoint (seq 9)
    verdict = _check(key, rewritten, [_head(entries, 11)])
    assert not verdict.ok and verdict.broken_at == 10
    assert "entries 10..11 were rewritten" in verdict.problem
    # An older head that still matches narrows it down.
    narrowed = _check(key, rewritten, [_head(entries, 10), _head(entries, 11)])
    assert narrowed.broken_at == 11 and "entry 11 was rewritten" in narrowed.problem


def test_a_break_inside_the_chain_is_named_before_the_head(key: KeyFile) -> None:
    entries = _chain(key, 9)
    head = _head(entries, 11)
    entries[2] = replace(entries[2], event=replace(entries[2].event, reason="x"))
    verdict = _check(key, entries, [head])
    assert not verdict.ok and verdict.broken_at == 3


def test_head_file_keeps_the_latest_head_that_verifies(key: KeyFile, tmp_path: Path) -> None:
    path = tmp_path / "heads.jsonl"
    signer = key.signer()
    for seq in (3, 9):
        head = AuditHead(STREAM, seq, bytes([seq]) * 32, 1_700_000_000_000 + seq)
        append_line(path, head, seal(head, signer, HEADS.channel, sender="audit"))
    forged = AuditHead(STREAM, 99, b"\x01" * 32, 1)
    append_line(path, forged, seal(forged, generate_key().signer(), HEADS.channel, sender="audit"))
    other = AuditHead("other.", 50, b"\x02" * 32, 1)
    append_line(path, other, seal(other, signer, HEADS.channel, sender="audit"))
    with path.open("a") as handle:
        handle.write("not json\n" + json.dumps({"stream": STREAM, "seq": 100, "record": "%%%"}) + "\n")
    found = read_file(path, STREAM, pinned_decoder("audit", key, DEFAULT_DEPLOYMENT), HEADS.name)
    assert [h.head.seq for h in found.found] == [9]
    assert found.refused == 3  # the forged head, and the two lines that do not parse
    assert found.found[0].where == f"{path}:2"


def test_pinning_refuses_another_key(key: KeyFile, tmp_path: Path) -> None:
    path = write_key(tmp_path / "audit.pub", key.public_only())
    pinned = f"SHA256:{key.fingerprint}"
    assert pinned_key(path, pinned).public_key == key.public_key
    assert pinned_key(path, key.fingerprint.replace(":", "").upper()).public_key == key.public_key
    with pytest.raises(KeyFileError, match="not the pinned"):
        pinned_key(path, f"SHA256:{generate_key().fingerprint}")
    with pytest.raises(KeyFileError, match="not a SHA-256 fingerprint"):
        normalise_fingerprint("SHA256:abc")
