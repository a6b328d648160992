"""PostgreSQL 15 from Debian, a private cluster owned by the service user.

TCP logins use SCRAM (``scram-sha-256``) with the passwords of ``devstack.auth``:
the cluster's admin role (the service user, which owns and migrates every
schema) and one login role per service (``qflare_<service>``). The unix socket
lives in a directory only the service user (and root, which runs the stack)
can enter; the stack itself sets passwords and roles up through it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from devstack import auth, install, proc
from devstack.base import Server
from qflare import localstack

#: Rewritten on every start, so a cluster made before authentication (``trust``) is converted too.
_HBA = """# Written by devstack/servers/postgres.py on every start.
local all {admin} trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


class Postgres(Server):
    name = "postgres"
    unprivileged = True

    @property
    def port(self) -> int:
        return self.cfg.postgres_port

    @property
    def endpoint(self) -> str:
        # Shown by `stack status`: the address, never the password.
        return f"postgresql://{self.cfg.service_user}@127.0.0.1:{self.port}/{self.cfg.postgres_db}"

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
            self._harden()
            return
        assert self.account is not None
        self.run_tool(
            [
                self._bin("initdb"),
                "-D",
                str(self.cluster),
                "-U",
                self.account.name,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ],
            "initdb",
        )
        self._harden()

    def _harden(self) -> None:
        assert self.account is not None
        (self.cluster / "pg_hba.conf").write_text(_HBA.format(admin=self.account.name))
        # The socket directory: nobody but its owner (and root) can reach the trusted socket.
        os.chmod(self.data_dir, 0o700)

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

    async def _admin(self, dbname: str = "postgres") -> psycopg.AsyncConnection[tuple[object, ...]]:
        """The admin role over the private unix socket (no password needed, none exposed)."""
        return await psycopg.AsyncConnection.connect(
            host=str(self.data_dir),
            port=self.port,
            user=self.cfg.service_user,
            dbname=dbname,
            connect_timeout=3,
            autocommit=True,
        )

    async def probe(self) -> None:
        async with await self._admin() as conn:
            cur = await conn.execute("SELECT 1")
            if await cur.fetchone() != (1,):
                raise ConnectionError("SELECT 1 returned something else")

    async def after_start(self) -> None:
        secrets = auth.ensure(self.cfg.runtime)["postgres"]
        db = sql.Identifier(self.cfg.postgres_db)
        async with await self._admin() as conn:
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.cfg.postgres_db,))
            if await cur.fetchone() is None:
                # Identifiers cannot be bound parameters; the name comes from typed config.
                await conn.execute(sql.SQL("CREATE DATABASE {}").format(db))
            # Utility statements take no bound parameters: the password is quoted client-side.
            admin = sql.Identifier(self.cfg.service_user)
            await conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(admin, sql.Literal(secrets["qflare"]))
            )
            await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
            for service in localstack.POSTGRES_ROLES:
                role = sql.Identifier(f"qflare_{service}")
                cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (f"qflare_{service}",))
                verb = "ALTER" if await cur.fetchone() else "CREATE"
                await conn.execute(
                    sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                        role, sql.Literal(secrets[service])
                    )
                )
                # Connect only: each role's rights on its own schema come with its migrations.
                await conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, role))

    def version(self) -> str:
        postgres = shutil.which(self._bin("postgres")) or self._bin("postgres")
        out = subprocess.run([postgres, "--version"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"\(PostgreSQL\) (\S+)", out)
        return match.group(1) if match else "unknown"
