"""What devices reported with their updates, read from the updates topic as the aggregator reads it.

``qflare demo`` uses it to show the strategy parameters the devices say they
trained with (FedProx's μ): the values come from each device's own signed
update metrics, not from what the scheduler sent. Device keys come from the
registry's device records, verified with the trusted service keys.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from qflare import poison
from qflare.errors import Rejected, UnknownKeyError
from qflare.fl import StrategyParams
from qflare.kafka import KafkaSettings, make_consumer
from qflare.keys import Revisions
from qflare.protocol import Decoder, KeyRing, Reassembler
from qflare.protocol.decoder import KeyLookup
from qflare.protocol.devices import Device
from qflare.protocol.training import ModelUpdate

REGISTRY = "registry"


class DeviceReports:
    """The metrics of every update of one job, by round and device."""

    def __init__(self, kafka: KafkaSettings, trusted: KeyLookup, job_id: str, shown: list[str]) -> None:
        self.kafka, self.job_id = kafka, job_id
        #: The update metrics to show: the strategy's parameters, as devices echo them.
        self.shown = shown
        self.topics = kafka.topics
        self.registry = Decoder(
            trusted,
            deployment=kafka.deployment_id,
            allowed_types={"device"},
            max_age_ms=None,
            limits=kafka.limits,
        )
        self.keys = KeyRing()
        self.revisions = Revisions()
        self.decoder = Decoder(
            self.keys,
            deployment=kafka.deployment_id,
            allowed_types={"model_update", "model_chunk"},
            max_age_ms=None,
            limits=kafka.limits,
        )
        self.reassembler = Reassembler(self.decoder)
        #: round -> device id -> the metrics its update carried
        self.metrics: dict[int, dict[str, dict[str, float]]] = {}
        # Updates whose device record was not read yet (the topics are fetched in no set order).
        self._waiting: list[bytes] = []

    @classmethod
    def of(
        cls, kafka: KafkaSettings, trusted: KeyLookup, job_id: str, params: StrategyParams
    ) -> DeviceReports | None:
        """Reports on ``params`` (a job's strategy parameters); None when the strategy has none."""
        shown = [key for key in params.model_dump() if key != "name"]
        return cls(kafka, trusted, job_id, shown) if shown else None

    async def start(self) -> None:
        self.consumer = make_consumer(self.kafka, group_id=None, auto_offset_reset="earliest")
        await self.consumer.start()
        parts = [
            TopicPartition(spec.name, p)
            for spec in (self.topics.devices, self.topics.updates)
            for p in range(spec.partitions)
        ]
        self.consumer.assign(parts)
        await self.consumer.seek_to_beginning(*parts)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def poll(self) -> None:
        batches = await self.consumer.getmany(timeout_ms=200, max_records=500)
        updates: list[bytes] = []
        for records in batches.values():
            for record in records:
                if record.topic == self.topics.devices.name:
                    self._device(record)
                elif record.value is not None:
                    updates.append(record.value)
        waiting, self._waiting = self._waiting, []
        for value in [*waiting, *updates]:
            self._update(value)

    async def values(self, round: int, expected: int, timeout_s: float = 30.0) -> dict[str, list[float]]:
        """Each shown metric's values in ``round``'s updates (in device-id order), once
        ``expected`` updates were read or ``timeout_s`` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.metrics.get(round, {})) < expected and loop.time() < deadline:
            await self.poll()
        reported = sorted(self.metrics.get(round, {}).items())
        return {key: [m[key] for _, m in reported if key in m] for key in self.shown}

    def _device(self, record: ConsumerRecord[Any, Any]) -> None:
        try:
            msg = self.registry.decode(record.value, record.topic) if record.value is not None else None
        except Exception as exc:  # whatever a record holds, the report goes on (qflare.poison)
            if poison.retry(exc):
                raise
            return
        if msg is None or msg.header.sender != REGISTRY:
            return  # only the registry vouches for a device's key
        if not isinstance(msg.body, Device):
            return
        try:
            if not self.revisions.admit(msg.body):
                return
        except Rejected:
            return  # an old record re-published: it vouches for nothing
        if msg.body.status == "active":
            self.keys.add(msg.body.device_id, msg.body.public_key, msg.body.sig_alg)

    def _update(self, value: bytes) -> None:
        try:
            # Only update records are held here (``poll`` routes the device topic apart).
            msg = self.reassembler.feed(self.decoder.decode(value, self.topics.updates.name))
        except UnknownKeyError:
            self._waiting.append(value)
            return
        except Exception as exc:  # what the aggregator refuses is not a report either
            if poison.retry(exc):
                raise
            return
        if msg is not None and isinstance(msg.body, ModelUpdate) and msg.body.job_id == self.job_id:
            update = msg.body
            if update.device_id == msg.header.sender:
                self.metrics.setdefault(update.round, {})[update.device_id] = dict(update.metrics)


def describe(values: dict[str, list[float]], updates: int) -> list[str]:
    """One line per shown metric that devices reported: the distinct values, and in how many updates.

    A strategy's server-side parameters (a server learning rate, FedPer's regex) are never
    reported by devices, so a key nobody reported is left out rather than shown as "none".
    """
    return [
        f"devices trained with {key} = {', '.join(f'{v:g}' for v in sorted(set(got)))} "
        f"(reported in {len(got)} of {updates} updates)"
        for key, got in values.items()
        if got
    ]
