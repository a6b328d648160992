"""docs/asyncapi.yaml stays in step with the topic list and the body types."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qflare.protocol import TopicSpec, topics
from qflare.protocol.channel import DEFAULT_DEPLOYMENT
from qflare.protocol.messages import BODY_TYPES

TEXT = (Path(__file__).resolve().parents[3] / "docs" / "asyncapi.yaml").read_text()


def _channel_block(spec: TopicSpec) -> str:
    start = TEXT.index(f'  address: "{spec.name}"\n')
    # The block ends at the next channel (two-space key) or the next top-level section.
    end = re.compile(r"^(  \w+:|\w+:)$", re.M).search(TEXT, start)
    assert end is not None
    return TEXT[start : end.start()]


def test_document_header() -> None:
    assert 'asyncapi: "3.0.0"' in TEXT
    assert 'defaultContentType: "application/msgpack"' in TEXT


@pytest.mark.parametrize("spec", list(topics(deployment=DEFAULT_DEPLOYMENT)), ids=lambda s: s.name)
def test_every_topic_is_a_channel_with_its_settings(spec: TopicSpec) -> None:
    block = _channel_block(spec)
    configs = spec.configs()
    assert f"partitions: {spec.partitions}\n" in block
    assert f'- "{configs["cleanup.policy"]}"' in block
    assert f"retention.ms: {configs['retention.ms']}\n" in block
    assert f"max.message.bytes: {configs['max.message.bytes']}\n" in block
    listed = set(re.findall(r'"\$ref": "#/components/messages/(\w+)"', block))
    assert listed == set(spec.types)


def test_every_body_type_is_a_message_with_a_schema() -> None:
    for type_ in BODY_TYPES:
        assert f'  {type_}:\n      name: "{type_}"' in TEXT, type_
        schema = "".join(part.capitalize() for part in type_.split("_")) + "Body"
        assert f"    {schema}:\n" in TEXT, schema
