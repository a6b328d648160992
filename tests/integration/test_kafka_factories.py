"""qflare.kafka against the real broker: topic creation with configs, a 6.6 MB signed update, chunks."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack.settings import StackSettings
from qflare.crypto import signature_backend
from qflare.errors import TopicSetupError
from qflare.kafka import (
    KafkaSettings,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    prepare_topics,
    read_to_end,
    replay,
)
from qflare.protocol import Decoder, KeyRing, Message, Reassembler, Tensor, seal, seal_chunked, topics
from qflare.protocol.channel import DEFAULT_DEPLOYMENT
from qflare.protocol.limits import Limits
from qflare.protocol.training import ModelUpdate

pytestmark = pytest.mark.integration
SENDER = "dev-it"
CNN = [(32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (512, 3136), (512,), (10, 512), (10,)]


def _update() -> ModelUpdate:
    rng = np.random.default_rng(0)
    tensors = tuple(Tensor.of(f"t{i}", rng.standard_normal(s).astype(np.float32)) for i, s in enumerate(CNN))
    return ModelUpdate("job-it", 1, SENDER, 0, 600, tensors)


async def _consume(consumer: AIOKafkaConsumer, n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        record = await asyncio.wait_for(consumer.getone(), timeout=60)
        out.append(record.value)
    return out


async def test_ensure_topics_creates_each_topic_once(stack: StackSettings, unique: str) -> None:
    settings = KafkaSettings(bootstrap=stack.kafka_bootstrap)
    specs = list(topics(f"it-{unique}.", deployment=DEFAULT_DEPLOYMENT))
    compacted = topics(
        f"it-{unique}.", deployment=DEFAULT_DEPLOYMENT
    ).devices  # the compacted device-record topic
    admin = make_admin(settings)
    await admin.start()
    try:
        created = await ensure_topics(admin, specs, settings)
        assert sorted(created) == sorted(s.name for s in specs)
        assert await ensure_topics(admin, specs, settings) == []
        listed = set(await admin.list_topics())
        assert {s.name for s in specs} <= listed
        # The broker applied each spec's configuration (compaction, record size).
        entries: dict[str, str] = {}
        # A just-created topic can take a moment to be describable, and its metadata can briefly
        # show the broker's defaults before the topic's own configuration reaches it.
        for _ in range(40):
            described = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, compacted.name)]
            )
            entries = {e[0]: e[1] for e in described[0].resources[0][4]}
            if entries.get("cleanup.policy") == "compact":
                break
            await asyncio.sleep(0.25)
        assert entries["cleanup.policy"] == "compact"
        assert int(entries["max.message.bytes"]) == Limits().kafka_max_bytes
    finally:
        await admin.close()


async def test_ensure_topics_names_the_topic_the_broker_refused(stack: StackSettings, unique: str) -> None:
    settings = KafkaSettings(bootstrap=stack.kafka_bootstrap)
    bad = replace(topics(f"it-{unique}.", deployment=DEFAULT_DEPLOYMENT).rounds, partitions=0)
    admin = make_admin(settings)
    await admin.start()
    try:
        with pytest.raises(TopicSetupError) as info:
            await ensure_topics(admin, [bad], settings)
    finally:
        await admin.close()
    assert info.value.field == bad.name


async def test_replay_reads_every_topic_of_a_deployment_from_the_start_to_the_end_seen(
    stack: StackSettings, unique: str
) -> None:
    settings = KafkaSettings(bootstrap=stack.kafka_bootstrap, topic_prefix=f"it-{unique}.")
    t = settings.topics
    assert sorted(await prepare_topics(settings)) == sorted(s.name for s in t)
    assert await prepare_topics(settings) == []
    sent = [f"record-{i}".encode() for i in range(30)]
    producer = make_producer(settings)
    await producer.start()
    try:
        for i, value in enumerate(sent[:20]):
            await producer.send_and_wait(t.devices.name, value, key=f"d{i}".encode())
        async with replay(settings, t.devices, t.health) as consumer:
            # Every partition of both topics, the empty one included, and the read ends.
            assert len(consumer.assignment()) == t.devices.partitions + t.health.partitions
            first = [r.value async for r in read_to_end(consumer)]
            for i, value in enumerate(sent[20:], start=20):
                await producer.send_and_wait(t.devices.name, value, key=f"d{i}".encode())
            # A later read carries on from where the first stopped.
            second = [r.value async for r in read_to_end(consumer)]
    finally:
        await producer.stop()
    assert sorted(first) == sorted(sent[:20])
    assert sorted(second) == sorted(sent[20:])


async def test_read_to_end_takes_the_end_offsets_of_a_client_that_does_not_fetch(
    stack: StackSettings, unique: str
) -> None:
    settings = KafkaSettings(bootstrap=stack.kafka_bootstrap, topic_prefix=f"it-{unique}.")
    spec = settings.topics.devices
    await prepare_topics(settings, [spec])
    sent = [f"record-{i}".encode() for i in range(12)]
    producer = make_producer(settings)
    offsets = make_consumer(settings, group_id=None)  # nothing assigned: it never fetches
    await producer.start()
    await offsets.start()
    try:
        for i, value in enumerate(sent):
            await producer.send_and_wait(spec.name, value, key=f"d{i}".encode())
        async with replay(settings, spec) as consumer:
            parts = sorted(consumer.assignment())
            end = await offsets.end_offsets(parts)
            got = [r.value async for r in read_to_end(consumer, parts, end=end)]
            # At the end already: nothing is fetched, the read ends at once.
            assert [r async for r in read_to_end(consumer, parts, end=end)] == []
    finally:
        await offsets.stop()
        await producer.stop()
    assert sorted(got) == sorted(sent)


async def test_full_model_update_and_chunks_round_trip(stack: StackSettings, unique: str) -> None:
    settings = KafkaSettings(bootstrap=stack.kafka_bootstrap)
    spec = topics(f"it-{unique}.", deployment=DEFAULT_DEPLOYMENT).updates
    await prepare_topics(settings, [spec])
    signer = signature_backend().generate_signer()
    update = _update()
    whole = seal(update, signer, spec.channel, sender=SENDER, round=1)
    chunks = seal_chunked(update, signer, spec.channel, sender=SENDER, round=1, chunk_bytes=1_000_000)
    assert len(whole) > 6_600_000 and len(chunks) == 7
    producer = make_producer(settings)
    await producer.start()
    try:
        for value in [whole, *chunks]:
            await producer.send_and_wait(spec.name, value, key=SENDER.encode())
    finally:
        await producer.stop()
    consumer = make_consumer(settings, spec.name, group_id=f"it-{unique}")
    await consumer.start()
    try:
        values = await _consume(consumer, 1 + len(chunks))
    finally:
        await consumer.stop()
    keys = KeyRing()
    keys.add(SENDER, signer.public_key)
    decoder = Decoder(keys, deployment=spec.deployment, allowed_types=spec.types, max_age_ms=spec.max_age_ms)
    reassembler = Reassembler(decoder)
    messages: list[Message] = []
    for value in values:
        message = reassembler.feed(decoder.decode(value, spec.name))
        if message is not None:
            messages.append(message)
    assert [m.body for m in messages] == [update, update]
    assert not decoder.rejected
