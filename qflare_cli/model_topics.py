"""Models read back from Kafka, verified: imports on ``qflare.model_store``, job models on ``qflare.models``.

Both topics are compacted and read from their start. Records are picked by
their key first (``<name>@<version>:<i>``, ``<job_id>:<i>``), which is cheap
and unverified; what is kept is then verified like any record (signature,
deployment and topic, and the sender the authority table allows: an operator
for an import, the aggregator for a job's model). A record that does not
verify is skipped (qflare.poison): a listing shows only what can be trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qflare import poison
from qflare.authority import authorise
from qflare.identity import TrustedKeys
from qflare.kafka import KafkaSettings, prepare_topics, read_to_end, replay
from qflare.protocol import Body, Decoder, Reassembler
from qflare.protocol.store import StoredModel
from qflare.protocol.topics import TopicSpec
from qflare.protocol.training import GlobalModel


async def _read(
    kafka: KafkaSettings, keys_dir: Path, spec: TopicSpec, wanted: Callable[[str], bool]
) -> list[Body]:
    """The verified bodies of ``spec`` whose record key ``wanted`` accepts, in the order read."""
    await prepare_topics(kafka, [spec])
    decoder = Decoder(
        TrustedKeys(keys_dir),
        deployment=kafka.deployment_id,
        allowed_types=spec.types,
        max_age_ms=None,
        limits=kafka.limits,
    )
    # Chunks of several versions interleave across partitions: room for many open streams.
    reassembler = Reassembler(
        decoder,
        max_streams=4096,
        max_streams_per_sender=4096,
        max_bytes_in_flight=4 * kafka.limits.max_message_bytes,
    )
    out: list[Body] = []
    async with replay(kafka, spec) as consumer:
        async for record in read_to_end(consumer):
            key = record.key.decode("utf-8", "replace") if record.key else ""
            if record.value is None or not wanted(key):
                continue
            try:
                msg = reassembler.feed(decoder.decode(record.value, record.topic))
                if msg is not None:
                    authorise(msg)
                    out.append(msg.body)
            except Exception as exc:  # whatever a record holds, the reading goes on (qflare.poison)
                if poison.retry(exc):
                    raise
    return out


async def stored_models(kafka: KafkaSettings, keys_dir: Path, ref: str | None = None) -> list[StoredModel]:
    """Every verified import (only ``<name>@<version>`` when given), the first of each version."""
    prefix = None if ref is None else f"{ref}:"
    bodies = await _read(
        kafka, keys_dir, kafka.topics.model_store, lambda key: prefix is None or key.startswith(prefix)
    )
    found: dict[str, StoredModel] = {}
    for body in bodies:
        if isinstance(body, StoredModel) and (ref is None or body.ref == ref):
            found.setdefault(body.ref, body)  # the first one stands, as in the aggregator's store
    return list(found.values())


async def job_models(kafka: KafkaSettings, keys_dir: Path, job_id: str) -> dict[int, GlobalModel]:
    """The verified versions of ``job_id``'s global model still on the topic, by version."""
    prefix = f"{job_id}:"
    bodies = await _read(kafka, keys_dir, kafka.topics.models, lambda key: key.startswith(prefix))
    return {b.version: b for b in bodies if isinstance(b, GlobalModel) and b.job_id == job_id}
