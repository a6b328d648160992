"""Signatures bind the deployment id and the topic: a record verifies only where it was produced."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from qflare.crypto import signature_backends
from qflare.errors import ChunkError, ConfigError, SignatureError
from qflare.kafka import KafkaSettings
from qflare.protocol import Channel, Reassembler, Tensor, seal, seal_chunked, topics
from qflare.protocol.devices import Enrollment, Heartbeat
from qflare.protocol.envelope import encode_envelope, parse_envelope
from qflare.protocol.training import ModelUpdate
from tests.unit.protocol.helpers import CHANNEL, DEPLOYMENT, NOW, SENDER, SIGNER, TOPIC, decoder


def _hb(channel: Channel = CHANNEL, seq: int = 1) -> bytes:
    return seal(Heartbeat(SENDER, seq), SIGNER, channel, sender=SENDER, ts_ms=NOW)


def test_a_record_verifies_on_its_own_topic_and_deployment() -> None:
    msg = decoder().decode(_hb(), TOPIC)
    assert msg.channel == CHANNEL
    assert msg.body == Heartbeat(SENDER, 1)


def test_a_record_copied_to_another_topic_does_not_verify() -> None:
    d = decoder()
    with pytest.raises(SignatureError) as info:
        d.decode(_hb(), "test.qflare.updates")
    assert info.value.field == "sig"
    assert "'test.qflare.updates'" in str(info.value)
    assert d.rejected == {"signature": 1}


def test_the_same_topic_under_another_prefix_is_another_topic() -> None:
    a, b = topics("tenant-a.", deployment=DEPLOYMENT), topics("tenant-b.", deployment=DEPLOYMENT)
    command = seal(Heartbeat(SENDER, 1), SIGNER, a.heartbeats.channel, sender=SENDER, ts_ms=NOW)
    assert decoder().decode(command, a.heartbeats.name).body == Heartbeat(SENDER, 1)
    with pytest.raises(SignatureError):
        decoder().decode(command, b.heartbeats.name)


def test_a_record_signed_for_another_deployment_does_not_verify() -> None:
    record = _hb(Channel("deployment-a", TOPIC))
    assert decoder(deployment="deployment-a").decode(record, TOPIC).body == Heartbeat(SENDER, 1)
    with pytest.raises(SignatureError) as info:
        decoder(deployment="deployment-b").decode(record, TOPIC)
    assert info.value.field == "sig"
    assert "'deployment-b'" in str(info.value)


def test_a_self_signed_enrolment_is_bound_too() -> None:
    record = seal(Enrollment(SENDER, SIGNER.public_key), SIGNER, CHANNEL, sender=SENDER, ts_ms=NOW)
    d = decoder(self_signed={"enrollment"})
    assert isinstance(d.decode(record, TOPIC).body, Enrollment)
    with pytest.raises(SignatureError):
        decoder(self_signed={"enrollment"}).decode(record, "test.qflare.other")


def test_every_signature_backend_agrees_on_the_bound_bytes() -> None:
    """Whoever verifies (pyca, liboqs), the channel is part of the message signed."""
    record = _hb()
    env = parse_envelope(record)
    elsewhere = Channel("other", TOPIC)
    for backend in signature_backends().values():
        assert backend.verify(SIGNER.public_key, env.header.signing_bytes(CHANNEL), env.sig)
        assert not backend.verify(SIGNER.public_key, env.header.signing_bytes(elsewhere), env.sig)
        d = decoder(verifier=backend)
        assert d.decode(record, TOPIC).channel == CHANNEL
        with pytest.raises(SignatureError):
            decoder(verifier=backend, deployment="other").decode(record, TOPIC)


def _update() -> ModelUpdate:
    w = Tensor.of("w", np.arange(20_000, dtype=np.float32))
    return ModelUpdate("job-1", 2, SENDER, 1, 10, (w,))


def test_chunks_are_bound_one_by_one() -> None:
    records = seal_chunked(_update(), SIGNER, CHANNEL, sender=SENDER, round=2, ts_ms=NOW, chunk_bytes=30_000)
    assert len(records) == 3
    d = decoder()
    r = Reassembler(d)
    assert r.feed(d.decode(records[0], TOPIC)) is None
    with pytest.raises(SignatureError):
        d.decode(records[1], "test.qflare.models")
    assert r.feed(d.decode(records[1], TOPIC)) is None
    whole = r.feed(d.decode(records[2], TOPIC))
    assert whole is not None and whole.channel == CHANNEL


def test_one_stream_cannot_mix_topics() -> None:
    """A sender that signs chunks of one stream for two topics it may write cannot splice them."""
    other = Channel(DEPLOYMENT, "test.qflare.other")
    here = seal_chunked(_update(), SIGNER, CHANNEL, sender=SENDER, round=2, ts_ms=NOW, chunk_bytes=30_000)
    d = decoder()
    r = Reassembler(d)
    first = d.decode(here[0], TOPIC)
    assert r.feed(first) is None
    stream = parse_envelope(here[1]).header
    # The same chunk header (same stream id), signed for the other topic.
    spliced = encode_envelope(
        stream, [parse_envelope(here[1]).body], SIGNER.sign(stream.signing_bytes(other))
    )
    with pytest.raises(ChunkError) as info:
        r.feed(d.decode(spliced, other.topic))
    assert info.value.field == "channel"


def test_deployment_ids_and_topic_names_are_checked() -> None:
    with pytest.raises(ConfigError):
        Channel("has space", TOPIC)
    with pytest.raises(ConfigError):
        Channel(DEPLOYMENT, "bad/topic")
    with pytest.raises(ConfigError):
        topics("", deployment="")
    with pytest.raises(ConfigError):
        decoder(deployment="-leading-dash")


def test_settings_carry_the_deployment_to_every_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KafkaSettings().deployment_id == "qflare-dev"
    monkeypatch.setenv("QFLARE_KAFKA_DEPLOYMENT_ID", "prod-eu-1")
    monkeypatch.setenv("QFLARE_KAFKA_TOPIC_PREFIX", "p.")
    t = KafkaSettings().topics
    assert {spec.deployment for spec in t} == {"prod-eu-1"}
    assert t.jobs.channel == Channel("prod-eu-1", "p.qflare.control.jobs")
    monkeypatch.setenv("QFLARE_KAFKA_DEPLOYMENT_ID", "not an id")
    with pytest.raises(pydantic.ValidationError, match="deployment_id"):
        KafkaSettings()
