"""The one place the hostile suite signs records.

Signatures bind the deployment id and the topic (protocol v2). The attacker
signs for the deployment the services run under (``QFLARE_KAFKA_DEPLOYMENT_ID``,
the same variable they read) and for the topic the record is sent to, so a
hostile record is refused for what it holds, not for being on the wrong channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from qflare.crypto import Signer
from qflare.kafka import KafkaSettings
from qflare.protocol import Body, seal, wire
from qflare.protocol.channel import Channel
from qflare.protocol.envelope import Chunk, seal_parts


def sign(
    body: Body,
    signer: Signer,
    *,
    sender: str,
    topic: str,
    round: int | None = None,
    ts_ms: int | None = None,
) -> bytes:
    """One signed record of ``body`` meant for ``topic``."""
    return seal(body, signer, _channel(topic), sender=sender, round=round, ts_ms=ts_ms)


def sign_parts(
    type_: str,
    body: Sequence[wire.Buffer],
    signer: Signer,
    *,
    sender: str,
    topic: str,
    chunk: Chunk | None = None,
) -> bytes:
    """A signed record of an already-encoded (possibly malformed) body, or one chunk of a stream."""
    return seal_parts(type_, body, signer, _channel(topic), sender=sender, chunk=chunk)


@cache
def deployment() -> str:
    """The deployment id the services run under (enrolment MACs bind it too)."""
    return KafkaSettings().deployment_id


def _channel(topic: str) -> Channel:
    return Channel(deployment(), topic)
