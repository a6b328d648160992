"""Hostile records, by kind, for every consumed topic.

``build(arsenal, total, rng)`` returns at least ``total`` records. Each names
its kind, its target topic, and ``judges``: the services that must count it as a
rejection. A kind whose records a correct service may also accept (a NUL byte
it escapes, a tombstone a changelog restore skips) or only log has no judge
there; restarts and the job's result then speak for it.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from edge.runtime import enrolment
from qflare.clock import now_ms
from qflare.crypto import Signer, generate_key
from qflare.crypto.base import MLDSA65_SIGNATURE_BYTES
from qflare.identity import Identity
from qflare.protocol import Body, wire
from qflare.protocol.control import AuditEvent, JobCommand, RegistryCommand
from qflare.protocol.devices import Device, DeviceHealth, EnrollmentResult, Heartbeat
from qflare.protocol.envelope import Chunk, new_message_id
from qflare.protocol.messages import ModelChunk
from qflare.protocol.training import GlobalModel, RoundComplete, RoundTask
from tests.hostile.sealing import deployment, sign, sign_parts
from tests.hostile.targets import Target

KINDS = (
    "random_bytes",
    "truncated",
    "bit_flip",
    "nul_key",
    "nul_strings",
    "absurd_tensor",
    "tombstone",
    "unsigned",
    "replay",
    "wrong_sender",
    "chunk_flood",
)
#: Streams one sender may hold open before its chunks are refused (``Reassembler``'s default):
#: that many flood records may be held rather than rejected.
FLOOD_ALLOWANCE = 4
#: Base records larger than this are not mutated or replayed in bulk (model records are ~1 MB).
_BASE_MAX_BYTES = 64 * 1024
_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Hostile:
    kind: str
    target: Target
    key: bytes | None
    value: bytes | None
    judges: frozenset[str]


@dataclass
class Arsenal:
    """What the attacker holds: an enrolled device of its own, stolen service keys, old records."""

    targets: list[Target]
    job_id: str
    #: The job's own devices (the ones training).
    victims: list[str]
    #: An enrolled device that never heartbeats, so it is never selected.
    attacker_id: str
    attacker: Signer
    #: Unused enrolment tokens, for validly signed enrolments carrying NUL labels.
    tokens: list[str]
    #: Trusted identities by name (registry, scheduler, aggregator, audit, operator).
    services: dict[str, Identity]
    #: Records already on each topic (by name): (key, value).
    harvest: dict[str, list[tuple[bytes | None, bytes]]] = field(default_factory=dict)

    def target(self, role: str) -> Target:
        return next(t for t in self.targets if t.role == role)


@dataclass(frozen=True, slots=True)
class RawBody(Body):
    """A body whose map is sent as given, so its fields can break every rule ``from_body`` checks."""

    TYPE: ClassVar[str] = "model_update"
    KEYS: ClassVar[tuple[str, ...]] = ()
    entries: dict[str, Any]

    def to_body(self) -> dict[str, Any]:
        return self.entries

    @classmethod
    def from_body(cls, data: object) -> Self:
        raise NotImplementedError("only ever sent")


def build(arsenal: Arsenal, total: int, rng: random.Random) -> list[Hostile]:
    """At least ``total`` hostile records over every target, shuffled."""
    signed = [
        *_nul_strings(arsenal, rng),
        *_absurd_tensors(arsenal, rng),
        *_tombstones(arsenal, rng),
        *_unsigned(arsenal, rng),
        *_replays(arsenal, rng),
        *_wrong_senders(arsenal),
        *_chunk_flood(arsenal, rng),
    ]
    cheap = _cheap(arsenal, max(0, total - len(signed)), rng)
    out = [*signed, *cheap]
    rng.shuffle(out)
    return out


def _every(t: Target) -> frozenset[str]:
    return t.counted_by


def _key(t: Target, arsenal: Arsenal, rng: random.Random) -> bytes:
    if t.role.startswith("changelog:"):
        return json.dumps(arsenal.attacker_id).encode()
    return rng.choice([arsenal.attacker_id, *arsenal.victims, arsenal.job_id]).encode()


def _bases(arsenal: Arsenal, t: Target) -> list[bytes]:
    """Valid records of ``t`` to mutate: what is there already, else a signed heartbeat."""
    found = [v for _, v in arsenal.harvest.get(t.name, []) if len(v) <= _BASE_MAX_BYTES]
    if found:
        return found[-50:]
    beat = Heartbeat(arsenal.attacker_id, 1, "idle", {"cpu": 0.1})
    return [sign(beat, arsenal.attacker, sender=arsenal.attacker_id, topic=t.name)]


def _cheap(arsenal: Arsenal, count: int, rng: random.Random) -> Iterator[Hostile]:
    """Random bytes, truncations, bit flips, and junk under NUL-bearing keys, spread over every target."""
    per = -(-count // (4 * len(arsenal.targets)))
    for t in arsenal.targets:
        bases = _bases(arsenal, t)
        for _ in range(per):
            noise = rng.randbytes(rng.randint(0, 2048))
            if rng.random() < 0.5:  # a fixmap of 12 entries: past the first byte, as an envelope starts
                noise = b"\x8c" + noise
            yield Hostile("random_bytes", t, _key(t, arsenal, rng), noise, _every(t))
            base = rng.choice(bases)
            cut = base[: rng.randrange(0, len(base))]
            yield Hostile("truncated", t, _key(t, arsenal, rng), cut, _every(t))
            flipped = bytearray(base)
            for _ in range(rng.randint(1, 3)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            yield Hostile("bit_flip", t, _key(t, arsenal, rng), bytes(flipped), _every(t))
            nul_key = rng.choice([b"\x00", b"dev\x00x", arsenal.attacker_id.encode() + b"\x00", b"\x00" * 8])
            yield Hostile("nul_key", t, nul_key, rng.choice([noise, cut, bytes(flipped)]), _every(t))


def _nul_strings(arsenal: Arsenal, rng: random.Random) -> Iterator[Hostile]:
    """Validly signed records whose stored strings hold NUL: a service may refuse or escape them."""
    ops = arsenal.services["operator"]
    registry = arsenal.services["registry"]
    enrol = arsenal.target("enrollments")
    for i, token in enumerate(arsenal.tokens):
        # A new device, enrolling with a valid token, its labels carrying NUL (stored by the registry).
        key = generate_key()
        device_id = f"{arsenal.attacker_id}-nul{i}"
        body = enrolment(device_id, key.public_key, token, deployment(), labels={"site\x00": f"lab\x00{i}"})
        value = sign(body, key.signer(), sender=device_id, topic=enrol.name)
        yield Hostile("nul_strings", enrol, device_id.encode(), value, frozenset())
    audit = arsenal.target("audit")
    jobs = arsenal.target("jobs")
    # No heartbeat: a registry that escapes NUL would mark the sender online, and the
    # scheduler would then select a device that never trains.
    for i in range(20):
        event = AuditEvent("probe.nul", "info", "registry", reason=f"x\x00{i}", subject="s\x00", detail={})
        value = sign(event, registry.signer, sender="registry", topic=audit.name)
        yield Hostile("nul_strings", audit, b"registry", value, frozenset())
        cmd = JobCommand(f"{arsenal.job_id}-nul{i}", "start", {"model\x00": "x\x00y"})
        value = sign(cmd, ops.signer, sender=ops.name, topic=jobs.name)
        yield Hostile("nul_strings", jobs, cmd.job_id.encode(), value, frozenset())


_HUGE = (1 << 31) - 1
_SHAPES: list[tuple[str, list[Any], bytes]] = [
    ("<f4", [0, _HUGE, _HUGE, _HUGE, _HUGE], b""),  # zero elements, yet past what numpy can index
    ("<f4", [_HUGE] * 8, b""),  # the product overflows any fixed-width integer
    ("<f4", [_HUGE] * 8, b"\x00" * 16),
    ("<f8", [2], b"\x00" * 16),  # a dtype the protocol does not carry
    ("|O", [1], b"\x00" * 8),  # object arrays: pickles
    ("<f4", [1] * 9, b"\x00" * 4),  # more dimensions than allowed
    ("<f4", [-1], b""),
    ("<f4", [2.5], b"\x00" * 8),
    ("<f4", [(1 << 64) - 1], b""),
    ("bf16", [3], b"\x00" * 5),
    ("\x00f4", [1], b"\x00" * 4),
]


def _absurd_tensors(arsenal: Arsenal, rng: random.Random) -> Iterator[Hostile]:
    """Updates from an enrolled device (not selected) whose tensor headers no allocation can satisfy."""
    updates = arsenal.target("updates")
    models = arsenal.target("models")
    for i in range(240):
        dtype, shape, data = _SHAPES[i % len(_SHAPES)]
        tensor = {"name": "w", "dtype": dtype, "shape": shape, "data": data}
        body = RawBody(
            {
                "job_id": arsenal.job_id,
                "round": rng.randint(1, 3),
                "device_id": arsenal.attacker_id,
                "base_version": 0,
                "num_examples": rng.choice([1, 0, -1, 1 << 62]),
                "tensors": [tensor],
                "metrics": {},
            }
        )
        value = sign_parts(
            body.TYPE,
            wire.pack_parts(body.to_body()),
            arsenal.attacker,
            sender=arsenal.attacker_id,
            topic=updates.name,
        )
        yield Hostile(
            "absurd_tensor", updates, arsenal.attacker_id.encode(), value, frozenset({"aggregator"})
        )
        if i % 4 == 0:
            # The same header as a global model, from a device: trusted keys only may publish models.
            model = {
                "job_id": arsenal.job_id,
                "version": 99,
                "round": 99,
                "tensors": [tensor],
                "metadata": {},
            }
            value = sign_parts(
                GlobalModel.TYPE,
                wire.pack_parts(model),
                arsenal.attacker,
                sender=arsenal.attacker_id,
                topic=models.name,
            )
            yield Hostile("absurd_tensor", models, f"{arsenal.job_id}:0".encode(), value, _every(models))


def _tombstones(arsenal: Arsenal, rng: random.Random) -> Iterator[Hostile]:
    """Null values on state topics (deleting the job's own devices) and on the scheduler's changelogs."""
    for t in arsenal.targets:
        if t.role == "devices":
            keys = [d.encode() for d in [*arsenal.victims, arsenal.attacker_id]]
        elif t.role == "models":
            keys = [f"{arsenal.job_id}:{i}".encode() for i in range(4)]
        elif t.role == "health":
            keys = [d.encode() for d in arsenal.victims]
        elif t.role.startswith("changelog:"):
            keys = [json.dumps(k).encode() for k in [*arsenal.victims, arsenal.job_id]]
        else:
            continue
        for _ in range(30):
            yield Hostile("tombstone", t, rng.choice(keys), None, _every(t))


def _zero_sig(record: bytes) -> bytes:
    """The record with its signature (the last field) zeroed: well formed, signed by nobody."""
    return record[:-MLDSA65_SIGNATURE_BYTES] + bytes(MLDSA65_SIGNATURE_BYTES)


def _unsigned(arsenal: Arsenal, rng: random.Random) -> Iterator[Hostile]:
    """State changes with no valid signature: envelopes with a zeroed signature, raw table rows."""
    reg = arsenal.services["registry"]
    sched = arsenal.services["scheduler"]
    ops = arsenal.services["operator"]
    now = now_ms()
    makers: dict[str, Callable[[str], tuple[Body, Identity]]] = {
        "devices": lambda v: (Device(v, "revoked", reg.key.public_key, now, now), reg),
        "health": lambda v: (_health(v), reg),
        "registry_control": lambda v: (RegistryCommand("revoke", v), ops),
        "jobs": lambda v: (JobCommand(arsenal.job_id, "stop"), ops),
        "rounds": lambda v: (
            RoundTask(arsenal.job_id, 2, 1, "fedavg", (v,), now + 60_000, 1, 1 << 40),
            sched,
        ),
    }
    for role, make in makers.items():
        t = arsenal.target(role)
        for _ in range(40):
            victim = rng.choice(arsenal.victims)
            body, who = make(victim)
            value = _zero_sig(sign(body, who.signer, sender=who.name, topic=t.name))
            yield Hostile("unsigned", t, victim.encode(), value, _every(t))
    rows: dict[str, Callable[[], tuple[object, object]]] = {
        "changelog:device-health": lambda: (arsenal.attacker_id, "online"),
        "changelog:device-status": lambda: (arsenal.attacker_id, "active"),
        "changelog:round-progress": lambda: (
            arsenal.job_id,
            {
                "job_id": arsenal.job_id,
                "config": {},
                "round": 99,
                "open": True,
                "devices": [arsenal.attacker_id],
            },
        ),
    }
    for role, row in rows.items():
        t = arsenal.target(role)
        for _ in range(40):
            name, row_value = row()
            value = json.dumps(row_value).encode()
            yield Hostile("unsigned", t, json.dumps(name).encode(), value, frozenset())


def _health(device_id: str) -> Body:
    return DeviceHealth(device_id, "offline", now_ms())


#: Who counts an exact re-send of a record it has already read (the audit service counts
#: replays under their own metric, and the aggregator skips re-sent device records by design).
_REPLAY_JUDGES = {
    "enrollments": frozenset({"registry"}),
    "heartbeats": frozenset({"registry"}),
    "registry_control": frozenset({"registry"}),
    "health": frozenset({"scheduler"}),
    "devices": frozenset({"scheduler"}),
    "jobs": frozenset({"scheduler", "aggregator"}),
    "rounds": frozenset({"aggregator"}),
}


def _replays(arsenal: Arsenal, rng: random.Random) -> Iterator[Hostile]:
    """Old signed records, sent again verbatim."""
    for t in arsenal.targets:
        if t.role.startswith("changelog:"):
            continue
        found = [(k, v) for k, v in arsenal.harvest.get(t.name, []) if len(v) <= _BASE_MAX_BYTES]
        if not found:
            continue
        for _ in range(min(150, 10 * len(found))):
            key, value = rng.choice(found)
            yield Hostile("replay", t, key, value, _REPLAY_JUDGES.get(t.role, frozenset()))


def _wrong_senders(arsenal: Arsenal) -> Iterator[Hostile]:
    """Commands and records signed by a trusted key that is not the one allowed to send them."""
    agg, sched, reg = (arsenal.services[n] for n in ("aggregator", "scheduler", "registry"))
    att, att_id, job = arsenal.attacker, arsenal.attacker_id, arsenal.job_id
    now = now_ms()
    victim = arsenal.victims[0]
    cases: list[tuple[str, Body, Signer, str, bytes, frozenset[str]]] = [
        # The aggregator's key revokes a training device and mints tokens.
        (
            "registry_control",
            RegistryCommand("revoke", victim),
            agg.signer,
            agg.name,
            b"revoke",
            frozenset({"registry"}),
        ),
        (
            "registry_control",
            RegistryCommand("issue_tokens", None, (secrets.token_bytes(32),), now + 60_000),
            sched.signer,
            sched.name,
            b"issue_tokens",
            frozenset({"registry"}),
        ),
        (
            "jobs",
            JobCommand(job, "stop"),
            agg.signer,
            agg.name,
            job.encode(),
            frozenset({"scheduler", "aggregator"}),
        ),
        (
            "rounds",
            RoundTask(job, 2, 1, "fedavg", (att_id,), now + 60_000, 1, 1 << 40),
            agg.signer,
            agg.name,
            f"{job}:2".encode(),
            frozenset({"aggregator"}),
        ),
        (
            "devices",
            Device(victim, "revoked", sched.key.public_key, now, now),
            sched.signer,
            sched.name,
            victim.encode(),
            frozenset({"aggregator", "scheduler"}),
        ),
        (
            "rounds_complete",
            RoundComplete(job, 1, "completed", 7, 1, 1, (att_id,)),
            reg.signer,
            reg.name,
            job.encode(),
            frozenset({"scheduler"}),
        ),
        (
            "enrollment_results",
            EnrollmentResult(victim, new_message_id(), bytes(32), "rejected", "revoked"),
            att,
            att_id,
            victim.encode(),
            frozenset({"audit"}),
        ),
        (
            "audit",
            AuditEvent("audit.checkpoint", "info", att_id),
            att,
            att_id,
            att_id.encode(),
            frozenset({"audit"}),
        ),
        # A device signing heartbeats under another device's name.
        (
            "heartbeats",
            Heartbeat(victim, 1 << 40, "idle"),
            att,
            victim,
            victim.encode(),
            frozenset({"registry"}),
        ),
    ]
    for role, body, signer, sender, key, judges in cases:
        t = arsenal.target(role)
        for _ in range(20):
            yield Hostile("wrong_sender", t, key, sign(body, signer, sender=sender, topic=t.name), judges)


def _chunk_flood(arsenal: Arsenal, rng: random.Random) -> Iterator[Hostile]:
    """One device declaring many big chunked streams, each with one small chunk."""
    updates = arsenal.target("updates")
    for _ in range(240):
        count = rng.randint(2, 256)
        piece = ModelChunk("model_update", 256 * _MIB, 0, secrets.token_bytes(32), rng.randbytes(1024))
        chunk = Chunk(new_message_id(), 0, count)
        value = sign_parts(
            ModelChunk.TYPE,
            wire.pack_parts(piece.to_body()),
            arsenal.attacker,
            sender=arsenal.attacker_id,
            topic=updates.name,
            chunk=chunk,
        )
        yield Hostile("chunk_flood", updates, arsenal.attacker_id.encode(), value, frozenset({"aggregator"}))
