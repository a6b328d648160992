"""Redis 7 from Debian, with its own port and append-only data dir."""

from __future__ import annotations

import re
import shutil
import subprocess

import redis.asyncio as aioredis

from devstack import install
from devstack.base import Server


class Redis(Server):
    name = "redis"

    @property
    def port(self) -> int:
        return self.cfg.redis_port

    @property
    def endpoint(self) -> str:
        return self.cfg.redis_url

    def installed(self) -> bool:
        return shutil.which("redis-server") is not None

    def install(self) -> None:
        install.apt_install(self.name, ["redis-server"])

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

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
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    async def probe(self) -> None:
        client = aioredis.Redis.from_url(self.endpoint, socket_connect_timeout=3)
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
