"""`qflare stack up | down | status`: start, stop and inspect the local servers.

`up` installs what is missing, starts every server that is not already running,
waits for each one's real health check, and on any failure stops what this call
started, so no half-started stack is left behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import redis.exceptions
from aiokafka.errors import KafkaError

from devstack.base import Server
from devstack.servers import all_servers
from devstack.settings import StackSettings
from qflare.errors import StackError

#: The error roots of each health-check client; anything else is a bug and propagates.
_NOT_READY = (OSError, TimeoutError, KafkaError, psycopg.Error, redis.exceptions.RedisError)


@dataclass(frozen=True)
class ServerStatus:
    name: str
    up: bool
    port: int
    endpoint: str
    version: str
    pid: int | None
    note: str


async def _healthy(server: Server) -> bool:
    try:
        await asyncio.wait_for(server.probe(), timeout=10)
    except _NOT_READY as exc:
        # "Not ready yet": the message is kept and reported if it never becomes healthy.
        server.last_probe_error = f"{type(exc).__name__}: {exc}"
        return False
    return True


async def wait_healthy(server: Server, deadline: float) -> None:
    while True:
        if await _healthy(server):
            return
        if server.running() is None:
            raise server.fail("the process exited during start-up")
        if time.monotonic() > deadline:
            last = server.last_probe_error or "no answer"
            raise server.fail(f"no healthy answer on port {server.port} in time ({last})")
        await asyncio.sleep(0.5)


async def up(cfg: StackSettings, say: Callable[[str], None] = print) -> list[ServerStatus]:
    """Start the stack; idempotent. Returns every server's status once all are healthy."""
    servers = all_servers(cfg)
    cfg.runtime.mkdir(parents=True, exist_ok=True)
    for server in servers:
        if not server.installed():
            say(f"installing {server.name} …")
            server.install()
    started: list[Server] = []
    deadline = time.monotonic() + cfg.start_timeout_s
    try:
        for server in servers:
            running = server.running()
            if running is not None:
                say(f"{server.name} already running (pid {running.pid})")
                continue
            server.start()
            started.append(server)
        await asyncio.gather(*(wait_healthy(s, deadline) for s in servers))
        for server in started:
            await server.after_start()
    except BaseException:
        for server in started:
            server.stop()
        raise
    return await status(cfg)


def down(cfg: StackSettings) -> list[str]:
    """Stop exactly the processes recorded in our pid files; returns the names stopped."""
    return [server.name for server in reversed(all_servers(cfg)) if server.stop()]


async def status(cfg: StackSettings) -> list[ServerStatus]:
    result = []
    for server in all_servers(cfg):
        running = server.running()
        healthy = running is not None and await _healthy(server)
        if running is None:
            note = "not started"
        elif healthy:
            note = "healthy"
        else:
            note = f"running but unhealthy: {server.last_probe_error}"
        result.append(
            ServerStatus(
                name=server.name,
                up=healthy,
                port=server.port,
                endpoint=server.endpoint,
                version=server.version() if server.installed() else "not installed",
                pid=running.pid if running else None,
                note=note,
            )
        )
    return result


def log_path(cfg: StackSettings, name: str) -> str:
    for server in all_servers(cfg):
        if server.name == name:
            return str(server.log_file)
    names = ", ".join(s.name for s in all_servers(cfg))
    raise StackError(name, f"unknown server; choose one of {names}")
