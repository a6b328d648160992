"""The registry's answer to a device's enrolment, read from the enrolment-results topic.

The registry answers every enrolment whose signature verified with a signed
``enrollment_result`` (accepted, or rejected with its reason), keyed by device id.
One :class:`EnrollmentResults` per process reads that topic for all of its devices.
Start it *before* sending enrolments: it reads from the topic's end as it is at start,
so no answer can be missed; each device then matches its answer by the message id of
its own enrolment, so an old or foreign result is never taken for its own.

Results are decoded without an age limit: a device whose clock is wrong is rejected
as ``stale``, and it must still be able to read the result that tells it so. The
enrolment id it matches on is what makes a result current.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from qflare import poison
from qflare.errors import QflareError, Reason
from qflare.kafka import KafkaSettings, make_consumer
from qflare.protocol import Decoder
from qflare.protocol.decoder import KeyLookup
from qflare.protocol.devices import EnrollmentResult
from qflare.protocol.topics import Topics

log = structlog.get_logger("qflare.edge.enrolment")
#: Answers remembered for devices that have not asked yet (a result may beat ``wait``).
_REMEMBER = 10_000
_Key = tuple[str, bytes]


class EnrollmentRefused(QflareError):
    """The registry rejected this enrolment; ``registry_reason`` and ``field`` are the registry's."""

    reason = Reason.ENROLLMENT_REFUSED
    retriable = False

    def __init__(self, result: EnrollmentResult) -> None:
        self.result = result
        self.registry_reason = result.reason
        super().__init__(
            f"the registry refused the enrolment of {result.device_id!r} ({result.reason}): {result.message}",
            field=result.field,
        )


class EnrollmentTimeout(QflareError):
    """No answer in time: the registry is down or behind, or the enrolment never verified."""

    reason = Reason.ENROLLMENT_TIMEOUT
    retriable = True


class EnrollmentResults:
    """Reads the enrolment-results topic and hands each device the answer to its enrolment."""

    def __init__(
        self, kafka: KafkaSettings, topics: Topics, registry_keys: KeyLookup, *, registry: str = "registry"
    ) -> None:
        self.kafka = kafka
        self.spec = topics.enrollment_results
        self.registry = registry
        self.decoder = Decoder(
            registry_keys, deployment=self.spec.deployment, allowed_types=self.spec.types, max_age_ms=None
        )
        self._seen: OrderedDict[_Key, EnrollmentResult] = OrderedDict()
        self._tally = poison.Tally("edge")
        self._waiting: dict[_Key, asyncio.Future[EnrollmentResult]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EnrollmentResults:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        consumer = make_consumer(self.kafka, group_id=None)
        await consumer.start()
        parts = [TopicPartition(self.spec.name, p) for p in range(self.spec.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:
            # Resolves the end offsets now: an answer written after this point cannot be missed.
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="edge-enrolment-results")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def seen(self, device_id: str, enrollment_id: bytes) -> EnrollmentResult | None:
        """The answer read so far for this enrolment, if any (accepted or not)."""
        return self._seen.get((device_id, enrollment_id))

    async def wait(
        self, device_id: str, enrollment_id: bytes, timeout_s: float | None = None
    ) -> EnrollmentResult:
        """The accepted result for this enrolment; ``EnrollmentRefused`` if it was rejected."""
        key = (device_id, enrollment_id)
        result = self._seen.get(key)
        if result is None:
            future = self._waiting.get(key)
            if future is None:
                future = self._waiting[key] = asyncio.get_running_loop().create_future()
            try:
                result = await asyncio.wait_for(asyncio.shield(future), timeout=timeout_s)
            except TimeoutError as exc:
                raise EnrollmentTimeout(
                    f"no enrolment result for {device_id!r} within {timeout_s} s", field="enrollment_id"
                ) from exc
        if not result.accepted:
            raise EnrollmentRefused(result)
        return result

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            for records in (await self._consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        self._accept(record.value, record.topic)
                    except Exception as exc:  # whatever a record holds, the device goes on (qflare.poison)
                        if poison.retry(exc):
                            raise
                        refused = poison.rejection(exc)
                        if self._tally.note(record.topic, None, refused.reason):
                            log.warning("ignored enrolment result", reason=refused.reason, error=str(refused))

    def _accept(self, value: bytes, topic: str) -> None:
        """Apply one enrolment result; raises for a record to ignore."""
        msg = self.decoder.decode(value, topic)
        result = msg.body
        if not isinstance(result, EnrollmentResult) or msg.header.sender != self.registry:
            log.warning("ignored enrolment result", sender=msg.header.sender, reason="sender")
            return
        key = (result.device_id, result.enrollment_id)
        # The first answer stands: a re-delivered enrolment may be answered again.
        if key in self._seen:
            return
        self._seen[key] = result
        while len(self._seen) > _REMEMBER:
            self._seen.popitem(last=False)
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)
