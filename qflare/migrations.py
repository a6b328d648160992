"""Versioned SQL migrations, one PostgreSQL schema per service.

Each service owns its tables: the registry's live in schema ``registry``, the
aggregator's in ``aggregator`` and so on, and nobody reads another's. A service
applies its own ``schema/NNN_name.sql`` files in order at start-up; each file
runs in one transaction together with its row in ``<schema>.schema_migrations``,
so a crash mid-migration leaves the previous version intact. An advisory lock
keeps two instances from migrating at once.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import psycopg

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


async def migrate(conn: psycopg.AsyncConnection[object], schema: str, directory: Path) -> int:
    """Apply pending migrations; returns the schema version now in force."""
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
