"""The error contract: ``is_transient`` on the real errors of every client, and one reason vocabulary."""

from __future__ import annotations

import asyncio
import errno
import importlib
import inspect
import pkgutil
import socket
import subprocess
import sys
from pathlib import Path

import aiokafka.errors as kafka_errors
import elastic_transport
import elasticsearch
import psycopg
import psycopg.errors
import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from qflare import metrics
from qflare.errors import (
    KeyMismatchError,
    QflareError,
    SchemaError,
    TopicSetupError,
    UnknownKeyError,
    is_transient,
)
from qflare.operator import RegistryUnconfirmedError
from qflare.reasons import Reason, table

ROOT = Path(__file__).resolve().parents[2]
#: Nothing listens on port 1: connecting fails at once with the client's real "refused" error.
CLOSED = "127.0.0.1:1"


def test_qflare_errors_say_so_themselves() -> None:
    assert is_transient(UnknownKeyError(b"\x01" * 16))
    assert is_transient(RegistryUnconfirmedError("the registry did not confirm"))
    assert not is_transient(SchemaError("bad", field="body"))
    assert not is_transient(KeyMismatchError("someone else's key"))
    # A failure whose cause decides: a broker error passed through as the flag.
    assert is_transient(TopicSetupError("NotControllerError", retriable=True))
    assert not is_transient(TopicSetupError("InvalidTopicError"))


def test_kafka_errors_by_their_retriable_flag() -> None:
    for transient in (
        kafka_errors.KafkaConnectionError,
        kafka_errors.NodeNotReadyError,
        kafka_errors.RequestTimedOutError,
        kafka_errors.NotLeaderForPartitionError,
        kafka_errors.UnknownTopicOrPartitionError,
        kafka_errors.CoordinatorNotAvailableError,
    ):
        assert transient.retriable and is_transient(transient()), transient
    # aiokafka flags its client-side timeout non-retriable, but a broker that went away looks like it.
    assert not kafka_errors.KafkaTimeoutError.retriable
    assert is_transient(kafka_errors.KafkaTimeoutError())
    for refused in (
        kafka_errors.TopicAuthorizationFailedError,
        kafka_errors.GroupAuthorizationFailedError,
        kafka_errors.ClusterAuthorizationFailedError,
        kafka_errors.SaslAuthenticationFailed,
        kafka_errors.MessageSizeTooLargeError,
        kafka_errors.InvalidTopicError,
        kafka_errors.IllegalStateError,
    ):
        assert not is_transient(refused()), refused


async def test_a_broker_that_is_not_there_is_transient() -> None:
    producer = AIOKafkaProducer(bootstrap_servers=CLOSED)
    with pytest.raises(kafka_errors.KafkaError) as caught:
        await producer.start()
    await producer.stop()
    assert is_transient(caught.value)


async def test_postgres_connection_failures_are_transient_refused_logins_not() -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        await psycopg.AsyncConnection.connect(f"postgresql://qflare@{CLOSED}/qflare", connect_timeout=5)
    assert is_transient(caught.value)
    assert is_transient(psycopg.errors.AdminShutdown("terminating connection due to administrator command"))
    assert is_transient(psycopg.errors.TooManyConnections("too many clients already"))
    # SQLSTATE class 28: an OperationalError too, but the password will not become right.
    assert not is_transient(psycopg.errors.InvalidPassword("password authentication failed"))
    assert not is_transient(psycopg.errors.UniqueViolation("duplicate key"))
    assert not is_transient(psycopg.errors.UndefinedTable("no such table"))


async def test_redis_connection_failures_are_transient_refused_logins_not() -> None:
    client = aioredis.Redis.from_url(f"redis://{CLOSED}")
    with pytest.raises(redis_errors.ConnectionError) as caught:
        await client.ping()
    await client.aclose()
    assert is_transient(caught.value)
    assert is_transient(redis_errors.TimeoutError("timed out"))
    assert is_transient(redis_errors.BusyLoadingError("loading the dataset"))
    # redis-py derives these from ConnectionError; retrying does not fix them.
    assert not is_transient(redis_errors.AuthenticationError("invalid password"))
    assert not is_transient(redis_errors.AuthorizationError("NOPERM"))
    assert not is_transient(redis_errors.ResponseError("WRONGTYPE"))


def _api_error(status: int) -> elasticsearch.ApiError:
    meta = elastic_transport.ApiResponseMeta(
        status=status,
        http_version="1.1",
        headers=elastic_transport.HttpHeaders(),
        duration=0.0,
        node=elastic_transport.NodeConfig("http", "127.0.0.1", 1),
    )
    return elasticsearch.ApiError(f"status {status}", meta=meta, body={})


async def test_elasticsearch_unreachable_or_overloaded_is_transient_refusals_not() -> None:
    es = elasticsearch.AsyncElasticsearch(f"http://{CLOSED}", max_retries=0)
    with pytest.raises(elasticsearch.ConnectionError) as caught:
        await es.info()
    await es.close()
    assert is_transient(caught.value)
    assert is_transient(elastic_transport.ConnectionTimeout("timed out"))
    assert not is_transient(elastic_transport.TlsError("certificate verify failed"))
    assert is_transient(_api_error(503)) and is_transient(_api_error(429))
    assert not is_transient(_api_error(401)) and not is_transient(_api_error(400))


async def test_network_errors_are_transient_local_ones_not() -> None:
    host, port = CLOSED.split(":")
    with pytest.raises(ConnectionRefusedError) as caught:
        await asyncio.open_connection(host, int(port))
    assert is_transient(caught.value)
    # A name that does not resolve (yet): in a container, a peer that has not started.
    assert is_transient(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert is_transient(TimeoutError()) and is_transient(OSError(errno.ENETUNREACH, "unreachable"))
    with pytest.raises(FileNotFoundError) as missing:
        (ROOT / "no-such-file").read_bytes()
    assert not is_transient(missing.value)
    assert not is_transient(PermissionError(errno.EACCES, "denied"))
    assert not is_transient(OSError(errno.ENOSPC, "no space left on device"))


def test_bugs_and_cancellation_are_not_transient() -> None:
    for exc in (
        ValueError("bug"),
        KeyError("x"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        SystemExit(1),
    ):
        assert not is_transient(exc), exc


def test_a_device_without_psycopg_redis_or_elasticsearch_can_use_it() -> None:
    """The client libraries are looked up, never imported: blocked imports change nothing."""
    code = (
        "import sys\n"
        "sys.modules.update(dict.fromkeys(['psycopg', 'redis', 'elasticsearch', 'elastic_transport']))\n"
        "from qflare.errors import is_transient\n"
        "assert is_transient(ConnectionResetError()) and not is_transient(ValueError())\n"
        "assert all(sys.modules[m] is None for m in ('psycopg', 'redis', 'elasticsearch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -- reasons ---------------------------------------------------------------------


def test_the_rejections_page_is_the_enum() -> None:
    page = (ROOT / "docs" / "rejections.md").read_text()
    assert page == table(), "docs/rejections.md is stale: run `make docs`"
    for reason in Reason:
        assert reason.value.isidentifier() and reason.value.islower(), reason
        assert reason.source and reason.meaning.endswith("."), reason
    assert len({r.value for r in Reason}) == len(Reason)


def _import_every_module() -> None:
    """Every class that derives from ``QflareError``, wherever it lives, must be defined to be walked."""
    for package in ("qflare", "services", "edge", "qflare_cli", "devstack"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


def _subclasses(cls: type[QflareError]) -> list[type[QflareError]]:
    return [cls, *(d for sub in cls.__subclasses__() for d in _subclasses(sub))]


def test_every_error_gives_a_reason_of_the_enum() -> None:
    _import_every_module()
    walked = {f"{c.__module__}.{c.__qualname__}" for c in _subclasses(QflareError)}
    # Those outside qflare.errors are found too.
    assert {
        "qflare.errors.Rejected",
        "services.registry.store.EnrollmentRejected",
        "edge.app.HandlerMissing",
        "qflare.operator.RegistryUnconfirmedError",
    } <= walked
    for cls in _subclasses(QflareError):
        if "reason" in inspect.signature(cls.__init__).parameters:
            # The reason is chosen per raise (e.g. the aggregator's Rejected): typed as a Reason.
            hints = inspect.get_annotations(cls.__init__, eval_str=True)
            assert hints["reason"] is Reason, cls
        else:
            assert isinstance(cls.reason, Reason), cls


def test_the_rejected_counter_starts_at_zero_for_every_reason() -> None:
    metrics.preset_rejections("test-preset", ["t1", "t2"])
    for topic in ("t1", "t2"):
        for reason in Reason:
            labels = {"service": "test-preset", "topic": topic, "reason": reason.value}
            assert REGISTRY.get_sample_value("qflare_rejected_messages_total", labels) == 0.0, reason
