"""Kafka factories without a broker: the options they pass, and how ensure_topics reads replies."""

from __future__ import annotations

from typing import Any

import pytest

from qflare import kafka
from qflare.protocol import Limits


class Recorder:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs


def test_settings_read_qflare_kafka_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QFLARE_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("QFLARE_KAFKA_MAX_RECORD_BYTES", str(4 * 1024 * 1024))
    settings = kafka.KafkaSettings()
    assert settings.bootstrap == "kafka:9092"
    assert settings.limits.max_record_bytes == 4 * 1024 * 1024
    monkeypatch.delenv("QFLARE_KAFKA_BOOTSTRAP")
    monkeypatch.delenv("QFLARE_KAFKA_PORT", raising=False)  # the dev stack's port, when moved
    assert kafka.KafkaSettings().bootstrap == "127.0.0.1:19092"


def test_producer_is_idempotent_and_sized_for_one_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "AIOKafkaProducer", Recorder)
    producer: Any = kafka.make_producer(kafka.KafkaSettings(), linger_ms=0)
    assert producer.kwargs["acks"] == "all"
    assert producer.kwargs["enable_idempotence"] is True
    assert producer.kwargs["max_request_size"] == Limits().kafka_max_bytes
    assert producer.kwargs["max_request_size"] > Limits().max_record_bytes
    assert producer.kwargs["linger_ms"] == 0


def test_consumer_fetches_a_full_record_and_never_autocommits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "AIOKafkaConsumer", Recorder)
    consumer: Any = kafka.make_consumer(kafka.KafkaSettings(), "a", "b", group_id="g")
    assert consumer.args == ("a", "b")
    assert consumer.kwargs["group_id"] == "g"
    assert consumer.kwargs["enable_auto_commit"] is False
    assert consumer.kwargs["max_partition_fetch_bytes"] == Limits().kafka_max_bytes
    assert consumer.kwargs["fetch_max_bytes"] >= consumer.kwargs["max_partition_fetch_bytes"]
