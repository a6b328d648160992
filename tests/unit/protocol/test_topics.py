"""The topic list: names, configs, prefixing, and agreement with the message types."""

from __future__ import annotations

import pytest

from qflare.errors import ConfigError
from qflare.protocol import Limits, topics
from qflare.protocol.channel import DEFAULT_DEPLOYMENT
from qflare.protocol.messages import BODY_TYPES

EXPECTED = {
    "qflare.device.enrollments",
    "qflare.device.enrollment.results",
    "qflare.device.heartbeats",
    "qflare.devices",
    "qflare.rounds",
    "qflare.models",
    "qflare.updates",
    "qflare.rounds.complete",
    "qflare.audit.events",
    "qflare.audit.heads",
    "qflare.control.jobs",
    "qflare.control.registry",
    "qflare.device.health",
    "qflare.model_store",
}


def test_every_topic_is_listed_once() -> None:
    names = [spec.name for spec in topics(deployment=DEFAULT_DEPLOYMENT)]
    assert sorted(names) == sorted(EXPECTED)


def test_compacted_topics_keep_records_forever() -> None:
    t = topics(deployment=DEFAULT_DEPLOYMENT)
    assert {spec.name for spec in t if spec.compacted} == {
        "qflare.devices",
        "qflare.models",
        "qflare.audit.heads",
        "qflare.model_store",
    }
    for spec in t:
        configs = spec.configs()
        assert configs["cleanup.policy"] == ("compact" if spec.compacted else "delete")
        assert int(configs["max.message.bytes"]) == Limits().kafka_max_bytes
        if spec.compacted:
            assert configs["retention.ms"] == "-1"
            assert spec.max_age_ms is None
        assert spec.partitions >= 1


def test_every_message_type_has_a_topic() -> None:
    carried = set().union(*(spec.types for spec in topics(deployment=DEFAULT_DEPLOYMENT)))
    assert carried == set(BODY_TYPES)


def test_prefix_renames_everything_and_lookup_works() -> None:
    t = topics("test-42.", deployment=DEFAULT_DEPLOYMENT)
    assert all(spec.name.startswith("test-42.qflare.") for spec in t)
    assert t.by_name("test-42.qflare.updates") == t.updates
    assert t.updates.types == topics(deployment=DEFAULT_DEPLOYMENT).updates.types
    with pytest.raises(ConfigError):
        t.by_name("qflare.updates")
