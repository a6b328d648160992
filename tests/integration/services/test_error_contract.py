"""What retrying cannot fix stops a loop at once, by name; what it can, it retries. Against the real broker.

The non-retriable error is a real one: a record larger than its topic's
``max.message.bytes``, refused by the broker (``MessageSizeTooLargeError``),
and a topic name the broker refuses to create (``InvalidTopicError``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from edge.link import Link
from edge.spool import Spool
from qflare.backoff import Backoff
from qflare.errors import is_transient
from qflare.identity import load_identity
from qflare.kafka import KafkaSettings, ensure_topics, make_admin, make_producer
from qflare.runner import EXIT_NOT_TRANSIENT, serve_forever

#: Topics made with this record limit refuse the ``BIG`` record the default producer sends.
SMALL = 64 * 1024
BIG = b"x" * (4 * SMALL)


async def _small_topic(kafka: KafkaSettings) -> str:
    small = kafka.model_copy(update={"max_record_bytes": SMALL})
    spec = kafka.topics.heartbeats
    admin = make_admin(small)
    await admin.start()
    try:
        await ensure_topics(admin, [spec], small)
    finally:
        await admin.close()
    return spec.name


async def _until(check: Any, what: str, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


async def test_the_broker_refusing_a_record_is_a_real_error_that_is_not_transient(
    kafka: KafkaSettings,
) -> None:
    topic = await _small_topic(kafka)
    async with make_producer(kafka) as producer:
        await producer.send_and_wait(topic, b"fits")
        with pytest.raises(MessageSizeTooLargeError) as caught:
            await producer.send_and_wait(topic, BIG)
    assert not is_transient(caught.value)


@dataclass
class _Sender:
    """A service whose every run sends ``value`` once (and fails if the broker refuses it)."""

    producer: AIOKafkaProducer
    topic: str
    value: bytes

    async def __aenter__(self) -> Self:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def run(self) -> None:
        await self.producer.send_and_wait(self.topic, self.value)

    def request_stop(self) -> None:
        pass


@dataclass
class _Factory:
    kafka: KafkaSettings
    topic: str
    value: bytes
    made: list[_Sender] = field(default_factory=list)

    def __call__(self) -> _Sender:
        self.made.append(_Sender(make_producer(self.kafka), self.topic, self.value))
        return self.made[-1]


async def test_a_service_stops_on_it_with_one_line_instead_of_restarting(kafka: KafkaSettings) -> None:
    topic = await _small_topic(kafka)
    factory = _Factory(kafka, topic, BIG)
    # The bound only turns a regression (restarting forever) into a failure instead of a hang.
    with structlog.testing.capture_logs() as logs, pytest.raises(SystemExit) as caught:
        async with asyncio.timeout(120):
            await serve_forever("probe", factory, metrics_port=0)
    assert caught.value.code == EXIT_NOT_TRANSIENT
    assert len(factory.made) == 1  # not restarted
    (line,) = [e for e in logs if e["log_level"] == "error"]
    assert "MessageSizeTooLargeError" in line["event"] and "MessageSizeTooLargeError" in line["error"]
    assert not [e for e in logs if "restarting" in e["event"]]


async def test_the_edge_link_gives_up_on_it_and_keeps_the_record(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    topic = await _small_topic(kafka)
    spool = Spool(tmp_path / "link.spool")
    link = Link(spool, lambda: make_producer(kafka))
    await link.start()
    link.send(topic, b"d1", b"fits")
    await _until(lambda: link.sent == 1, "the link delivers")
    link.send(topic, b"d1", BIG)

    def ended() -> bool:
        try:
            link.check()
        except MessageSizeTooLargeError:
            return True
        return False

    await _until(ended, "the link ends on the refused record")
    assert link.sent == 1 and len(spool) == 1 and not link.connected  # the refused record stays spooled
    with pytest.raises(MessageSizeTooLargeError):
        await link.stop()
    spool.close()


async def test_the_edge_link_keeps_retrying_a_broker_that_is_away(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "link.spool")
    backoff = Backoff(initial_s=0.01, max_s=0.05)
    away = KafkaSettings(bootstrap="127.0.0.1:1")
    link = Link(spool, lambda: make_producer(away), backoff=backoff)
    await link.start()
    link.send("anything", None, b"waits")
    await _until(lambda: backoff.attempts >= 3, "the link retries")
    link.check()  # still running: a broker that is away is transient
    assert len(spool) == 1 and not link.connected
    await link.stop(drain_timeout_s=0)
    spool.close()


def test_a_service_that_cannot_create_its_topics_exits_at_once(keys_dir: Path, tmp_path: Path) -> None:
    """The real aggregator process: an invalid topic prefix is refused by the broker, not retried."""
    load_identity("aggregator", keys_dir, create=True)  # keys are never made silently
    env = {
        **os.environ,
        "QFLARE_KAFKA_TOPIC_PREFIX": "not a valid prefix!",
        "QFLARE_AGGREGATOR_KEYS_DIR": str(keys_dir),
        "QFLARE_AGGREGATOR_METRICS_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.aggregator"], env=env, capture_output=True, timeout=180, check=False
    )
    assert done.returncode == EXIT_NOT_TRANSIENT, done.stderr.decode()[-3000:]
    records = [json.loads(line) for line in done.stderr.decode().splitlines() if line.startswith("{")]
    (error,) = [r for r in records if r["log.level"] == "error"]
    assert "TopicSetupError" in error["message"] and "InvalidTopicError" in error["error"]
    assert not [r for r in records if "restarting" in r["message"]]
