"""The registry's PostgreSQL state: devices, tokens, rotations, applied commands.

Every mutation runs in one transaction with the checks that guard it
(``SELECT … FOR UPDATE``), so a crash or a re-delivered message can never
half-apply an enrolment or consume a token twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from qflare.crypto.enrolment import rotation_proof_ok, token_id, token_mac_ok
from qflare.errors import Rejected
from qflare.migrations import migrate
from qflare.outbox import Outbox
from qflare.reasons import Reason
from services.registry.labels import admitted_labels, check_device_labels

SCHEMA_DIR = Path(__file__).with_name("schema")
Conn = psycopg.AsyncConnection[TupleRow]


class EnrollmentRejected(Rejected):
    """An enrolment that is well-formed and signed but not allowed."""


@dataclass(frozen=True)
class EnrolmentClaim:
    """What a verified enrolment asks for, with the scope its MAC and proof must bind."""

    scope: str
    device_id: str
    public_key: bytes
    kid: bytes
    labels: dict[str, str]
    token_id: bytes | None = None
    token_mac: bytes | None = None
    rotation_proof: bytes | None = None

    def token_ok(self, mac_key: bytes) -> bool:
        assert self.token_mac is not None
        return token_mac_ok(mac_key, self.scope, self.device_id, self.kid, self.token_mac)

    def proven_by(self, current_public_key: bytes) -> bool:
        if self.rotation_proof is None:
            return False
        return rotation_proof_ok(
            current_public_key, self.scope, self.device_id, self.kid, self.rotation_proof
        )


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    key_id: bytes
    public_key: bytes
    status: str
    labels: dict[str, str] = field(default_factory=dict)
    enrolled_ms: int = 0
    updated_ms: int = 0
    revision: int = 1


_COLUMNS = "device_id, key_id, public_key, status, labels, enrolled_at, updated_at, revision"


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _row(values: tuple[Any, ...]) -> DeviceRow:
    device_id, kid, pk, status, labels, enrolled, updated, revision = values
    return DeviceRow(
        str(device_id),
        bytes(kid),
        bytes(pk),
        str(status),
        dict(labels),
        _ms(enrolled),
        _ms(updated),
        int(revision),
    )


class RegistryStore:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        # Unscoped: like the devices it reports, the registry's state is not kept per deployment.
        self.outbox = Outbox(conn, "registry", scope=None)

    @classmethod
    async def connect(cls, dsn: str) -> RegistryStore:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await migrate(conn, "registry", SCHEMA_DIR)
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    async def devices(self, *, status: str | None = None) -> list[DeviceRow]:
        where = "WHERE status = %s" if status else ""
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM registry.devices {where} ORDER BY device_id",
            (status,) if status else (),
        )
        return [_row(r) for r in await cur.fetchall()]

    async def device(self, device_id: str) -> DeviceRow | None:
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM registry.devices WHERE device_id = %s",
            (device_id,),
        )
        found = await cur.fetchone()
        return _row(found) if found else None

    async def enrol(self, claim: EnrolmentClaim, *, max_declared: int = 2**40) -> tuple[DeviceRow, str]:
        """Apply one verified enrolment. Returns the row and the outcome
        (``new``, ``unchanged`` or ``rotated``), or raises ``EnrollmentRejected``
        (or ``DeclaredExamplesRejected``: a new device's declared size is above its token's
        ``qflare.max_examples`` or ``max_declared``; the token is then not used).

        A known device's labels are kept as they were approved: a re-enrolment or a key
        rotation changes its key at most."""
        async with self.conn.transaction():
            cur = await self.conn.execute(
                f"SELECT {_COLUMNS} FROM registry.devices WHERE device_id = %s FOR UPDATE",
                (claim.device_id,),
            )
            found = await cur.fetchone()
            if found is not None:
                return await self._re_enrol(_row(found), claim)
            check_device_labels(claim.labels)
            token_labels = await self._use_token(claim)
            # Raised inside the transaction: a refused declaration leaves the token unused.
            labels = admitted_labels(claim.labels, token_labels, limit=max_declared)
            cur = await self.conn.execute(
                f"INSERT INTO registry.devices (device_id, key_id, public_key, status, labels) "
                f"VALUES (%s, %s, %s, 'active', %s) RETURNING {_COLUMNS}",
                (claim.device_id, claim.kid, claim.public_key, json.dumps(labels)),
            )
            inserted = await cur.fetchone()
            assert inserted is not None
            return _row(inserted), "new"

    async def _re_enrol(self, row: DeviceRow, claim: EnrolmentClaim) -> tuple[DeviceRow, str]:
        # A suspended device is still enrolled (it heartbeats); only a retired one is refused.
        if row.status not in ("active", "suspended"):
            raise EnrollmentRejected(
                Reason.REVOKED, f"device {row.device_id} is {row.status}", field="device_id"
            )
        if row.key_id == claim.kid:
            return row, "unchanged"
        cur = await self.conn.execute(
            "SELECT key_id FROM registry.rotations WHERE device_id = %s AND expires_at > now() FOR UPDATE",
            (row.device_id,),
        )
        window = await cur.fetchone()
        if window is None:
            raise EnrollmentRejected(
                Reason.KEY_MISMATCH,
                f"device {row.device_id} is pinned to key {row.key_id.hex()}; an operator must "
                "authorise a rotation (`qflare devices rotate-key`)",
                field="public_key",
            )
        named = bytes(window[0]) if window[0] is not None else None
        # The operator named the new key, or the current key vouches for it; a window alone
        # would let anyone who can sign an enrolment for this id take the device over.
        if named != claim.kid and not claim.proven_by(row.public_key):
            raise EnrollmentRejected(
                Reason.ROTATION_UNPROVEN,
                f"rotating device {row.device_id} to key {claim.kid.hex()} needs a rotation_proof "
                "signed by its current key, or an operator rotate command naming this key id",
                field="body.rotation_proof",
            )
        await self.conn.execute("DELETE FROM registry.rotations WHERE device_id = %s", (row.device_id,))
        update = "key_id = %s, public_key = %s"
        return await self._update(row.device_id, update, (claim.kid, claim.public_key)), "rotated"

    async def _use_token(self, claim: EnrolmentClaim) -> dict[str, str]:
        if claim.token_id is None or claim.token_mac is None:
            raise EnrollmentRejected(
                Reason.TOKEN_MISSING, "a new device needs an enrolment token", field="body.token_id"
            )
        cur = await self.conn.execute(
            "SELECT token_hash, expires_at, used_at, labels FROM registry.tokens WHERE token_id = %s "
            "FOR UPDATE",
            (claim.token_id,),
        )
        found = await cur.fetchone()
        if found is None:
            raise EnrollmentRejected(
                Reason.TOKEN_UNKNOWN, "enrolment token is not known", field="body.token_id"
            )
        mac_key, expires_at, used_at, labels = found
        if not claim.token_ok(bytes(mac_key)):
            raise EnrollmentRejected(
                Reason.TOKEN_MAC,
                "the token MAC does not match this deployment, device id and key id",
                field="body.token_mac",
            )
        if used_at is not None:
            raise EnrollmentRejected(
                Reason.TOKEN_REUSED, "enrolment token was already used", field="body.token_id"
            )
        if expires_at <= datetime.now(UTC):
            raise EnrollmentRejected(
                Reason.TOKEN_EXPIRED, "enrolment token has expired", field="body.token_id"
            )
        await self.conn.execute(
            "UPDATE registry.tokens SET used_at = now(), used_by = %s, used_key_id = %s WHERE token_id = %s",
            (claim.device_id, claim.kid, claim.token_id),
        )
        return dict(labels)

    async def _update(self, device_id: str, assignments: str, params: tuple[object, ...]) -> DeviceRow:
        cur = await self.conn.execute(
            f"UPDATE registry.devices SET {assignments}, updated_at = now(), revision = revision + 1 "
            f"WHERE device_id = %s RETURNING {_COLUMNS}",
            (*params, device_id),
        )
        updated = await cur.fetchone()
        assert updated is not None
        return _row(updated)

    async def set_status(self, device_id: str, status: str) -> DeviceRow | None:
        """Revoke, deregister, delete, suspend or reinstate; None if the device is unknown. Idempotent."""
        async with self.conn.transaction():
            row = await self.device(device_id)
            if row is None:
                return None
            if row.status == status:
                return row
            return await self._update(device_id, "status = %s", (status,))

    async def add_tokens(self, hashes: list[bytes], expires_ms: int, labels: dict[str, str]) -> int:
        expires = datetime.fromtimestamp(expires_ms / 1000, UTC)
        async with self.conn.transaction(), self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO registry.tokens (token_hash, token_id, expires_at, labels) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (token_hash) DO NOTHING",
                [(h, token_id(h), expires, json.dumps(labels)) for h in hashes],
            )
        return len(hashes)

    async def authorise_rotation(self, device_id: str, expires_ms: int, kid: bytes | None) -> None:
        expires = datetime.fromtimestamp(expires_ms / 1000, UTC)
        await self.conn.execute(
            "INSERT INTO registry.rotations (device_id, expires_at, key_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (device_id) DO UPDATE SET expires_at = EXCLUDED.expires_at, "
            "key_id = EXCLUDED.key_id, authorized_at = now()",
            (device_id, expires, kid),
        )

    async def first_application(self, sender: str, message_id: bytes) -> bool:
        """Record an operator command as applied; False if it already was (a re-delivery)."""
        cur = await self.conn.execute(
            "INSERT INTO registry.applied_commands (sender, message_id) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING RETURNING sender",
            (sender, message_id),
        )
        return await cur.fetchone() is not None
