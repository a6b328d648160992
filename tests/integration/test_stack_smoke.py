"""Smoke tests: each server of the stack does real work through its Python client."""

from __future__ import annotations

import asyncio
import os

import psycopg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from elasticsearch import AsyncElasticsearch

from devstack.settings import StackSettings
from qflare.kafka import KafkaSettings

TEN_MB = 10 * 1024 * 1024


async def test_kafka_10mb_record_commit_and_reread(stack: StackSettings, unique: str) -> None:
    topic, group = f"smoke.big.{unique}", f"smoke-group-{unique}"
    # Raw aiokafka clients (the broker's own limits are under test), logged in as the stack's admin.
    login = KafkaSettings(bootstrap=stack.kafka_bootstrap).connection()
    admin = AIOKafkaAdminClient(**login)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": str(TEN_MB + 1024 * 1024)})]
        )
    finally:
        await admin.close()
    payload = os.urandom(TEN_MB)
    producer = AIOKafkaProducer(
        **login,
        acks="all",
        enable_idempotence=True,
        max_request_size=TEN_MB + 1024 * 1024,
    )
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, payload, key=b"k")
    finally:
        await producer.stop()

    def consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            **login,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=TEN_MB + 1024 * 1024,
            fetch_max_bytes=TEN_MB + 2 * 1024 * 1024,
        )

    first = consumer()
    await first.start()
    try:
        record = await asyncio.wait_for(first.getone(), timeout=60)
        assert record.value == payload and record.offset == sent.offset
        await first.commit()
    finally:
        await first.stop()

    # The same group resumes after the committed offset, and can seek back to re-read.
    second = consumer()
    await second.start()
    try:
        tp = TopicPartition(topic, 0)
        await asyncio.wait_for(_assigned(second), timeout=60)
        assert await second.committed(tp) == sent.offset + 1
        assert await second.position(tp) == sent.offset + 1
        second.seek(tp, sent.offset)
        again = await asyncio.wait_for(second.getone(), timeout=60)
        assert again.value == payload
    finally:
        await second.stop()


async def _assigned(consumer: AIOKafkaConsumer) -> None:
    while not consumer.assignment():
        await asyncio.sleep(0.1)


async def test_postgres_async_round_trip(stack: StackSettings, unique: str) -> None:
    table = f"smoke_{unique}"
    async with await psycopg.AsyncConnection.connect(stack.postgres_dsn) as conn:
        await conn.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY, body bytea)")
        await conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (7, b"\x00\x01qflare"))
        cur = await conn.execute(f"SELECT id, body FROM {table}")
        assert await cur.fetchall() == [(7, b"\x00\x01qflare")]


async def test_redis_key_with_ttl(stack: StackSettings, unique: str) -> None:
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        key = f"smoke:{unique}"
        await client.set(key, b"alive", px=300)
        assert await client.get(key) == b"alive"
        assert 0 < await client.pttl(key) <= 300
        for _ in range(100):  # bounded wait for expiry
            if await client.exists(key) == 0:
                break
            await asyncio.sleep(0.05)
        assert await client.exists(key) == 0
    finally:
        await client.aclose()


async def test_elasticsearch_index_refresh_search(stack: StackSettings, unique: str) -> None:
    index = f"smoke-{unique}"
    es = AsyncElasticsearch(stack.elasticsearch_url)
    try:
        await es.index(index=index, id="1", document={"service": "smoke", "message": f"hello {unique}"})
        await es.indices.refresh(index=index)
        found = await es.search(index=index, query={"match": {"message": unique}})
        hits = found["hits"]["hits"]
        assert [h["_id"] for h in hits] == ["1"]
        assert hits[0]["_source"]["service"] == "smoke"
    finally:
        await es.indices.delete(index=index, ignore_unavailable=True)
        await es.close()
