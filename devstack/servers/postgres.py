"""PostgreSQL 15 from Debian, a private cluster owned by the service user."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import psycopg

from devstack import install, proc
from devstack.base import Server


class Postgres(Server):
    name = "postgres"
    unprivileged = True

    @property
    def port(self) -> int:
        return self.cfg.postgres_port

    @property
    def endpoint(self) -> str:
        return self.cfg.postgres_dsn

    @property
    def cluster(self) -> Path:
        return self.data_dir / "data"

    def _bin(self, tool: str) -> str:
        return str(self.cfg.postgres_bin_dir / tool)

    def installed(self) -> bool:
        return Path(self._bin("postgres")).is_file() and Path(self._bin("initdb")).is_file()

    def install(self) -> None:
        install.apt_install(self.name, ["postgresql-15"])

    def prepare(self) -> None:
        proc.ensure_traversable(self.data_dir)
        proc.make_owned_dir(self.data_dir, self.account)
        if self.cluster.exists() and any(self.cluster.iterdir()):
            if not (self.cluster / "PG_VERSION").is_file():
                raise self.fail(
                    f"data directory {self.cluster} is not a PostgreSQL cluster (no PG_VERSION); "
                    "remove it to start afresh"
                )
            return
        assert self.account is not None
        self.run_tool(
            [
                self._bin("initdb"),
                "-D",
                str(self.cluster),
                "-U",
                self.account.name,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ],
            "initdb",
        )

    def command(self) -> list[str]:
        return [
            self._bin("postgres"),
            "-D",
            str(self.cluster),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.data_dir}",
            "-c",
            "max_connections=200",
            "-c",
            "fsync=on",
            "-c",
            "logging_collector=off",
        ]

    def _admin_dsn(self) -> str:
        return f"postgresql://{self.cfg.service_user}@127.0.0.1:{self.port}/postgres"

    async def probe(self) -> None:
        async with await psycopg.AsyncConnection.connect(self._admin_dsn(), connect_timeout=3) as conn:
            cur = await conn.execute("SELECT 1")
            if await cur.fetchone() != (1,):
                raise ConnectionError("SELECT 1 returned something else")

    async def after_start(self) -> None:
        async with await psycopg.AsyncConnection.connect(self._admin_dsn(), autocommit=True) as conn:
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.cfg.postgres_db,))
            if await cur.fetchone() is None:
                # Identifiers cannot be bound parameters; the name comes from typed config.
                await conn.execute(f'CREATE DATABASE "{self.cfg.postgres_db}"')

    def version(self) -> str:
        postgres = shutil.which(self._bin("postgres")) or self._bin("postgres")
        out = subprocess.run([postgres, "--version"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"\(PostgreSQL\) (\S+)", out)
        return match.group(1) if match else "unknown"
