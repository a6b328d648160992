"""Versioned SQL migrations, one PostgreSQL schema per service.

Each service owns its tables: the registry's live in schema ``registry``, the
aggregator's in ``aggregator`` and so on, and nobody reads another's. A service
applies its own ``schema/NNN_name.sql`` files in order at start-up; each file
runs in one transaction together with its row in ``<schema>.schema_migrations``,
so a crash mid-migration leaves the previous version intact. An advisory lock
keeps two instances from migrating at once.

Least privilege: a service logs in with its own role, which must not own its
tables (an owner can always UPDATE and DELETE, whatever was revoked). So when
an owner DSN is known (``QFLARE_POSTGRES_OWNER_DSN``, or the local stack's
admin role on the same server), the migrations run there and the service's
role is granted only row access to its own schema; tables named append-only
(the audit chain) get INSERT and SELECT alone.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterable
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from qflare import localstack
from qflare.errors import ConfigError

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def migration_files(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ConfigError(
                f"migration file {path.name} must be named NNN_description.sql", field=str(path)
            )
        found.append((int(match.group(1)), path))
    versions = [v for v, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise ConfigError(
            f"migration versions must be 1..N without gaps, got {versions}", field=str(directory)
        )
    return found


def owner_conninfo(conn: psycopg.AsyncConnection[object]) -> str | None:
    """Where to migrate as owner: the variable, else the local stack's admin on ``conn``'s server."""
    explicit = os.environ.get("QFLARE_POSTGRES_OWNER_DSN")
    if explicit:
        return explicit
    secret = localstack.password("postgres", "qflare")
    if secret is None:
        return None
    info = conn.info
    return make_conninfo(host=info.host, port=info.port, dbname=info.dbname, user="qflare", password=secret)


async def _user(conn: psycopg.AsyncConnection[object]) -> str:
    cur = await conn.execute("SELECT current_user")
    row = await cur.fetchone()
    assert isinstance(row, tuple)
    return str(row[0])


async def migrate(
    conn: psycopg.AsyncConnection[object], schema: str, directory: Path, *, append_only: Iterable[str] = ()
) -> int:
    """Apply pending migrations (as the owner when one is known); returns the schema version now in force."""
    files = migration_files(directory)
    if files and await _applied(conn, schema) >= {version for version, _ in files}:
        # Up to date: a service's role that may not run DDL (compose's) starts without trying.
        return files[-1][0]
    owner = owner_conninfo(conn)
    role = await _user(conn)
    if owner is None:
        return await _apply(conn, schema, directory)
    async with await psycopg.AsyncConnection.connect(owner, autocommit=True) as owner_conn:
        if await _user(owner_conn) == role:
            return await _apply(conn, schema, directory)
        version = await _apply(owner_conn, schema, directory)
        await _grant(owner_conn, schema, role, append_only)
        return version


async def _applied(conn: psycopg.AsyncConnection[object], schema: str) -> set[int]:
    """Versions recorded in ``<schema>.schema_migrations``; none when it does not exist or is not readable."""
    try:
        cur = await conn.execute(f'SELECT version FROM "{schema}".schema_migrations')
    except (
        psycopg.errors.UndefinedTable,
        psycopg.errors.InvalidSchemaName,
        psycopg.errors.InsufficientPrivilege,
    ):
        return set()
    return {int(row[0]) for row in await cur.fetchall() if isinstance(row, tuple)}


async def _grant(
    conn: psycopg.AsyncConnection[object], schema: str, role: str, append_only: Iterable[str]
) -> None:
    s, r = sql.Identifier(schema), sql.Identifier(role)
    async with conn.transaction():
        await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r))
        await conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(s, r)
        )
        await conn.execute(
            sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, r)
        )
        for table in append_only:
            await conn.execute(
                sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {}.{} FROM {}").format(
                    s, sql.Identifier(table), r
                )
            )


async def _apply(conn: psycopg.AsyncConnection[object], schema: str, directory: Path) -> int:
    lock = zlib.crc32(schema.encode())
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
            "(version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
    current = 0
    for version, path in migration_files(directory):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            cur = await conn.execute(
                f'SELECT 1 FROM "{schema}".schema_migrations WHERE version = %s', (version,)
            )
            if await cur.fetchone() is None:
                await conn.execute(path.read_text().encode())
                await conn.execute(
                    f'INSERT INTO "{schema}".schema_migrations (version, name) VALUES (%s, %s)',
                    (version, path.name),
                )
        current = version
    return current
