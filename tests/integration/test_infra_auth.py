"""The stack's servers refuse clients without credentials and principals beyond their ACLs.

Each case asserts the server's own error (the broker's error code, PostgreSQL's
SQLSTATE, Redis's reply), and a positive control shows the same operation
succeeds for the principal allowed to do it, so a refusal is the ACL and not a
broken setup.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic, RecordsToDelete
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
    for_code,
)
from aiokafka.structs import OffsetAndMetadata

from devstack.settings import StackSettings
from qflare import localstack
from qflare.kafka import KafkaSettings, make_admin, make_consumer, make_producer, prepare_topics
from qflare.kafka_acls import grant_deployment
from qflare.protocol.topics import Topics
from services.audit.store import AuditStore


@pytest.fixture
async def deployment(stack: StackSettings, unique: str) -> AsyncIterator[Topics]:
    """A deployment of its own prefix: topics created and its ACLs granted by the admin."""
    prefix = f"auth-{unique}."
    admin = KafkaSettings(bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
    await prepare_topics(admin)
    await grant_deployment(admin, prefix)
    yield admin.topics


def _as(stack: StackSettings, user: str, prefix: str = "", **fields: object) -> KafkaSettings:
    return KafkaSettings(bootstrap=stack.kafka_bootstrap, username=user, topic_prefix=prefix, **fields)  # type: ignore[arg-type]


async def test_kafka_without_credentials_cannot_connect(stack: StackSettings) -> None:
    plain = KafkaSettings(
        bootstrap=stack.kafka_bootstrap, security_protocol="PLAINTEXT", request_timeout_ms=5000
    )
    producer = make_producer(plain)
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        await producer.start()
    await producer.stop()


async def test_kafka_wrong_password_is_refused_by_the_broker(
    stack: StackSettings, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = _as(stack, "device", password="not-the-password", request_timeout_ms=5000)
    producer = make_producer(wrong)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    # aiokafka logs the broker's SaslAuthenticate error before giving up on the bootstrap.
    refusal = [r.getMessage() for r in caplog.records if "invalid credentials" in r.getMessage()]
    assert refusal, caplog.text
    print("wrong password:", refusal[0])


async def test_only_the_registry_writes_device_records(stack: StackSettings, deployment: Topics) -> None:
    prefix = deployment.devices.name.removesuffix("qflare.devices")
    device = make_producer(_as(stack, "device", prefix))
    await device.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError) as denied:
            await device.send_and_wait(deployment.devices.name, b"forged", key=b"dev-1")
        print("device -> devices:", denied.value)
        # A tombstone is a write too.
        with pytest.raises(TopicAuthorizationFailedError):
            await device.send_and_wait(deployment.devices.name, None, key=b"dev-1")
        # Its own topics stay writable.
        await device.send_and_wait(deployment.heartbeats.name, b"x", key=b"dev-1")
    finally:
        await device.stop()
    registry = make_producer(_as(stack, "registry", prefix))
    await registry.start()
    try:
        await registry.send_and_wait(deployment.devices.name, b"record", key=b"dev-1")
    finally:
        await registry.stop()


async def test_only_the_scheduler_writes_its_changelogs_and_round_tasks(
    stack: StackSettings, deployment: Topics
) -> None:
    prefix = deployment.devices.name.removesuffix("qflare.devices")
    changelog = f"qflare-scheduler{prefix}".rstrip(".") + "-round-progress-changelog"
    operator = make_admin(KafkaSettings(bootstrap=stack.kafka_bootstrap))
    await operator.start()
    try:
        await operator.create_topics([NewTopic(changelog, 1, 1)])
    finally:
        await operator.close()
    for intruder in ("device", "aggregator", "registry"):
        producer = make_producer(_as(stack, intruder, prefix))
        await producer.start()
        try:
            for topic in (changelog, deployment.rounds.name):
                with pytest.raises(TopicAuthorizationFailedError) as denied:
                    await producer.send_and_wait(topic, b"injected", key=b"job-1")
            print(f"{intruder} -> changelog/rounds:", denied.value)
        finally:
            await producer.stop()
    scheduler = make_producer(_as(stack, "scheduler", prefix))
    await scheduler.start()
    try:
        await scheduler.send_and_wait(changelog, b"state", key=b"job-1")
        await scheduler.send_and_wait(deployment.rounds.name, b"task", key=b"job-1:1")
    finally:
        await scheduler.stop()


async def test_a_device_cannot_delete_records_or_topics(stack: StackSettings, deployment: Topics) -> None:
    prefix = deployment.devices.name.removesuffix("qflare.devices")
    admin = make_admin(_as(stack, "device", prefix))
    await admin.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError) as denied:
            await admin.delete_records(
                {TopicPartition(deployment.updates.name, 0): RecordsToDelete(before_offset=-1)}
            )
        print("device DeleteRecords:", denied.value)
        response = await admin.delete_topics([deployment.devices.name])
        codes = {entry[0]: entry[1] for entry in response.topic_error_codes}
        assert for_code(codes[deployment.devices.name]) is TopicAuthorizationFailedError
        print("device DeleteTopics:", for_code(codes[deployment.devices.name]).__name__)
    finally:
        await admin.close()
    # Still there, for the super user too.
    operator = make_admin(KafkaSettings(bootstrap=stack.kafka_bootstrap))
    await operator.start()
    try:
        assert deployment.devices.name in await operator.list_topics()
    finally:
        await operator.close()


async def test_a_device_cannot_commit_offsets_for_a_service_group(
    stack: StackSettings, deployment: Topics
) -> None:
    prefix = deployment.devices.name.removesuffix("qflare.devices")
    tp = TopicPartition(deployment.heartbeats.name, 0)
    consumer = make_consumer(_as(stack, "device", prefix), group_id="qflare-registry")
    await consumer.start()
    try:
        consumer.assign([tp])
        with pytest.raises(GroupAuthorizationFailedError) as denied:
            await consumer.commit({tp: OffsetAndMetadata(1_000_000, "")})
        print("device OffsetCommit:", denied.value)
    finally:
        await consumer.stop()


async def test_the_audit_role_cannot_update_or_delete_its_chain(stack: StackSettings, unique: str) -> None:
    store = await AuditStore.connect(localstack.postgres_user_dsn("audit"), f"auth-{unique}.")
    await store.close()
    async with await psycopg.AsyncConnection.connect(
        localstack.postgres_user_dsn("audit"), autocommit=True
    ) as conn:
        await conn.execute("SELECT count(*) FROM audit.chain")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as update:
            await conn.execute("UPDATE audit.chain SET actor = 'x' WHERE stream = %s", (f"auth-{unique}.",))
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as delete:
            await conn.execute("DELETE FROM audit.chain WHERE stream = %s", (f"auth-{unique}.",))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("TRUNCATE audit.chain")
        print("audit UPDATE:", update.value.sqlstate, update.value)
        print("audit DELETE:", delete.value.sqlstate, delete.value)
        # Nor another service's schema.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT 1 FROM registry.schema_migrations LIMIT 1")


async def test_postgres_refuses_a_login_without_password(stack: StackSettings) -> None:
    dsn = f"postgresql://qflare_audit@127.0.0.1:{stack.postgres_port}/{stack.postgres_db}"
    with pytest.raises(psycopg.OperationalError, match="password") as refused:
        await psycopg.AsyncConnection.connect(dsn, connect_timeout=5)
    print("postgres without password:", refused.value)


async def test_redis_refuses_a_wrong_password_and_anonymous_commands(stack: StackSettings) -> None:
    wrong = aioredis.Redis.from_url(f"redis://scheduler:wrong@127.0.0.1:{stack.redis_port}/0")
    try:
        with pytest.raises(
            redis.exceptions.AuthenticationError, match="invalid username-password pair"
        ) as refused:
            await wrong.ping()
        print("redis wrong password:", refused.value)
    finally:
        await wrong.aclose()
    anonymous = aioredis.Redis.from_url(f"redis://127.0.0.1:{stack.redis_port}/0")
    try:
        with pytest.raises(redis.exceptions.AuthenticationError) as anon:
            await anonymous.set("qflare:x", "1")
        print("redis anonymous:", anon.value)
    finally:
        await anonymous.aclose()
    scheduler = aioredis.Redis.from_url(localstack.redis_user_url("scheduler"))
    try:
        with pytest.raises(redis.exceptions.NoPermissionError) as noperm:
            await scheduler.set("qflare:registry:health", "1")
        print("redis scheduler on registry keys:", noperm.value)
    finally:
        await scheduler.aclose()
