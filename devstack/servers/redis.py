"""Redis 7 from Debian, with its own port and append-only data dir.

Access control: the ``default`` user is off, so a connection without a password
can run nothing; ``admin`` (the stack's health check, tests, operators) may do
everything, and each service that uses Redis has a user limited to its own key
namespace and to data commands (no FLUSHALL, CONFIG, KEYS…).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import redis.asyncio as aioredis

from devstack import auth, install
from devstack.base import Server
from qflare import localstack

#: Each service's key namespace (see services/registry/liveness.py and services/scheduler/leader.py).
_KEYS = {"registry": "~qflare:*registry:*", "scheduler": "~qflare:*scheduler:leader*"}
_DATA_COMMANDS = "-@all +@read +@write +@connection +@transaction +@scripting -@dangerous"


class Redis(Server):
    name = "redis"

    @property
    def port(self) -> int:
        return self.cfg.redis_port

    @property
    def endpoint(self) -> str:
        # Shown by `stack status`: the address, never the password.
        return f"redis://127.0.0.1:{self.port}/0"

    def installed(self) -> bool:
        return shutil.which("redis-server") is not None

    def install(self) -> None:
        install.apt_install(self.name, ["redis-server"])

    @property
    def acl_file(self) -> Path:
        return self.data_dir / "users.acl"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secrets = auth.ensure(self.cfg.runtime)["redis"]
        lines = [
            "user default off resetkeys resetchannels -@all",
            f"user admin on >{secrets['admin']} ~* &* +@all",
        ]
        for user in localstack.REDIS_USERS:
            lines.append(
                f"user {user} on >{secrets[user]} resetkeys {_KEYS[user]} resetchannels {_DATA_COMMANDS}"
            )
        self.acl_file.touch(mode=0o600)
        os.chmod(self.acl_file, 0o600)
        self.acl_file.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--aclfile",
            str(self.acl_file),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    async def probe(self) -> None:
        client = aioredis.Redis.from_url(self.cfg.redis_url, socket_connect_timeout=3)
        try:
            if not await client.ping():
                raise ConnectionError("PING did not answer PONG")
        finally:
            await client.aclose()

    def version(self) -> str:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout
        match = re.search(r"v=(\S+)", out)
        return match.group(1) if match else "unknown"
