"""`stack up` faults: each names the server, the cause and the log; nothing is left running.

These use a second, private runtime dir and other ports so they never touch the
stack the rest of the suite uses.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import launcher, proc
from devstack.servers import Kafka, Postgres, Redis
from devstack.settings import StackSettings
from qflare.errors import StackError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def private(tmp_path: Path) -> StackSettings:
    # /tmp is world-traversable, so the unprivileged service user can reach it.
    return StackSettings(
        runtime_dir=tmp_path / "rt",
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        postgres_port=_free_port(),
        redis_port=_free_port(),
        elasticsearch_port=_free_port(),
        elasticsearch_transport_port=_free_port(),
        jaeger_port=_free_port(),
        jaeger_grpc_port=_free_port(),
        jaeger_otlp_grpc_port=_free_port(),
        jaeger_otlp_http_port=_free_port(),
        start_timeout_s=60,
    )


@pytest.fixture
def occupied(private: StackSettings) -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", private.elasticsearch_port))
    sock.listen()
    yield sock
    sock.close()


def test_port_taken_names_server_and_rolls_back(private: StackSettings, occupied: socket.socket) -> None:
    with pytest.raises(StackError) as caught:
        asyncio.run(launcher.up(private, say=lambda _line: None))
    message = str(caught.value)
    assert caught.value.server == "elasticsearch"
    assert f"port {private.elasticsearch_port} is already in use" in message
    assert "elasticsearch.log" in message
    # Kafka, PostgreSQL and Redis were started before the failure and must be gone.
    for server in (Kafka(private), Postgres(private), Redis(private)):
        assert server.running() is None
        assert proc.port_free(server.port), f"{server.name} still listens on {server.port}"


def test_corrupt_postgres_data_dir_is_named(private: StackSettings) -> None:
    server = Postgres(private)
    server.cluster.mkdir(parents=True)
    (server.cluster / "garbage").write_text("not a cluster")
    with pytest.raises(StackError) as caught:
        server.start()
    assert caught.value.server == "postgres"
    assert "PG_VERSION" in str(caught.value) and "postgres.log" in str(caught.value)
    assert server.running() is None


def test_server_that_dies_at_start_is_reported_with_its_log(private: StackSettings) -> None:
    server = Redis(private)
    server.prepare()
    # An append-only file Redis cannot parse makes it exit at start-up.
    (server.data_dir / "appendonlydir").mkdir()
    (server.data_dir / "appendonlydir" / "appendonly.aof.manifest").write_text("corrupt\n")
    server.start()
    with pytest.raises(StackError) as caught:
        asyncio.run(launcher.wait_healthy(server, deadline=time.monotonic() + 60))
    assert caught.value.server == "redis"
    assert "exited during start-up" in str(caught.value)
    server.stop()


def test_missing_java_is_one_clear_line(
    private: StackSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError) as caught:
        Kafka(private).command()
    assert "java is not installed" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_down_when_nothing_runs_is_harmless(private: StackSettings) -> None:
    assert launcher.down(private) == []
