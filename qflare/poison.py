"""The poison-record policy every consumer follows, written once.

Whatever a record holds, the consumer that reads it must end up in one of two
places: the record's effects are stored, or the record is rejected with a typed
reason, reported, and committed past. Nothing one record contains may stop a
service, because a consumer that exits without committing reads the same record
again after every restart and never gets past it.

- ``rejection`` turns any exception raised while decoding or storing one record
  into the rejection it stands for; ``retry`` picks out what is transient (a
  broker or database that went away): skipping a good record because a server
  blinked would lose it, so those stop the step and the record is read again.
- ``Tally`` rate-limits the reports: per (topic, source, reason) the first few
  rejections of a window are reported in full, later ones are only counted, and
  one summary per window says how many were left out. Unsigned garbage thus
  costs a bounded number of signed audit entries, whatever its volume.
- ``printable`` makes an unverified string (a Kafka key) safe to store as text.
- ``fetch`` is ``getmany`` for consumers that seek to stored positions: an
  offset that fell out of the log is reported as a ``Gap`` and the partition
  continues from its earliest offset, instead of being reset silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError
from prometheus_client import Counter

from qflare.clock import now_ms
from qflare.errors import ProtocolError, Rejected, is_transient
from qflare.metrics import REJECTED
from qflare.reasons import Reason

__all__ = ["UNVERIFIED", "Gap", "Summary", "Tally", "fetch", "printable", "record_key", "rejection", "retry"]

#: The source of a record whose sender could not be verified: its claimed sender is worth nothing.
UNVERIFIED = "unverified"
#: Modules whose errors mean "the store refused this value", when they are not transient.
_STORES = frozenset({"psycopg", "redis", "elasticsearch", "elastic_transport"})

SUPPRESSED = Counter(
    "qflare_rejections_suppressed_total",
    "Rejections counted but not reported one by one (rate limit of the poison-record policy)",
    ["service", "topic", "reason"],
)
GAPS = Counter(
    "qflare_offset_gaps_total",
    "Offset ranges that left a log before this consumer read them, by topic",
    ["service", "topic"],
)


def retry(exc: BaseException) -> bool:
    """True when ``exc``, raised while handling one record, must stop the step instead.

    Transient errors (a server away) and what is no ``Exception`` at all (a
    cancelled task, an interrupt) are not the record's fault: the record is read
    again once the service restarts. A ``ProtocolError`` always is the record's
    fault, even one marked retriable (a key not known yet). Use as::

        except Exception as exc:
            if poison.retry(exc):
                raise
            reject(poison.rejection(exc))
    """
    if isinstance(exc, ProtocolError):
        return False
    return not isinstance(exc, Exception) or is_transient(exc)


def rejection(exc: BaseException) -> ProtocolError:
    """The typed rejection ``exc`` stands for: itself if a ``ProtocolError``, else ``Rejected``
    with the error's own reason (a ``QflareError``), ``store_refused`` (a database refused the
    value) or ``unhandled``."""
    if isinstance(exc, ProtocolError):
        return exc
    text = f"{type(exc).__name__}: {printable(str(exc), 400)}"
    if type(exc).__module__.split(".")[0] in _STORES:
        return Rejected(Reason.STORE_REFUSED, text)
    reason = getattr(exc, "reason", None)
    return Rejected(reason if isinstance(reason, Reason) else Reason.UNHANDLED, text)


def printable(text: str, max_chars: int = 256) -> str:
    """``text`` cut to ``max_chars`` with NUL replaced: PostgreSQL text refuses NUL outright."""
    return text[:max_chars].replace("\x00", "\ufffd")


def record_key(record: ConsumerRecord[Any, Any]) -> str | None:
    """A record's key as storable text (it is unverified: any bytes at all)."""
    key = record.key
    if key is None:
        return None
    return printable(bytes(key).decode(errors="replace"))


@dataclass(frozen=True, slots=True)
class Summary:
    """How many rejections one (topic, source, reason) had in one window, and how many were reported."""

    topic: str
    source: str
    reason: Reason
    count: int
    reported: int
    window_start_ms: int
    window_end_ms: int

    @property
    def suppressed(self) -> int:
        return self.count - self.reported

    def detail(self) -> dict[str, str | int]:
        return {
            "topic": self.topic,
            "count": self.count,
            "reported": self.reported,
            "suppressed": self.suppressed,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
        }


@dataclass(slots=True)
class _Window:
    start_ms: int
    count: int = 0
    reported: int = 0


class Tally:
    """Rejections counted per (topic, source, reason) and window; says which to report in full.

    ``source`` is the verified sender, or ``UNVERIFIED``. At most ``max_sources``
    keys are tracked per window; the rest share one ``*`` source, so a flood of
    made-up senders cannot grow the table either.
    """

    OVERFLOW = "*"

    def __init__(
        self,
        service: str,
        *,
        window_s: float = 60.0,
        reports_per_window: int = 5,
        max_sources: int = 1024,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.service = service
        self.window_ms = int(window_s * 1000)
        self.reports_per_window = reports_per_window
        self.max_sources = max_sources
        self.clock = clock
        self._windows: dict[tuple[str, str, Reason], _Window] = {}

    def note(self, topic: str, source: str | None, reason: Reason) -> bool:
        """Count one rejection; True when it is to be reported in full (logged and audited).

        A suppressed rejection is counted in the metrics here; a reported one is
        counted where it is reported, as before.
        """
        src = source or UNVERIFIED
        key = (topic, src, reason)
        if key not in self._windows and len(self._windows) >= self.max_sources:
            key = (topic, self.OVERFLOW, reason)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(self.clock())
        window.count += 1
        if window.reported < self.reports_per_window:
            window.reported += 1
            return True
        REJECTED.labels(self.service, topic, reason).inc()
        SUPPRESSED.labels(self.service, topic, reason).inc()
        return False

    def due(self, *, flush: bool = False) -> list[Summary]:
        """Summaries of the windows that ended (all of them with ``flush``) and left something out.

        A window whose every rejection was reported needs no summary: the reports say it all.
        """
        now = self.clock()
        out = []
        for key, window in list(self._windows.items()):
            end = window.start_ms + self.window_ms
            if not flush and now < end:
                continue
            del self._windows[key]
            if window.count > window.reported:
                topic, source, reason = key
                out.append(
                    Summary(topic, source, reason, window.count, window.reported, window.start_ms, now)
                )
        return out


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``[first, resumed)`` of a partition that were never read: they left the log first."""

    topic: str
    partition: int
    first: int
    resumed: int

    @property
    def skipped(self) -> int:
        return max(0, self.resumed - self.first)

    def detail(self) -> dict[str, str | int]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "first_offset": self.first,
            "resumed_offset": self.resumed,
            "skipped": self.skipped,
        }


Batches = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


async def fetch(
    consumer: AIOKafkaConsumer,
    *parts: TopicPartition,
    service: str,
    timeout_ms: int,
    max_records: int,
) -> tuple[Batches, list[Gap]]:
    """``getmany`` (of ``parts``, default all), plus the gaps met: positions that left the log.

    The consumer must be made with ``auto_offset_reset="none"``, so that the
    client raises instead of resetting on its own. A partition with no position at
    all (a consumer group's first start) starts at the beginning: nothing was
    skipped. A position outside the log moves to its start and becomes a ``Gap``,
    which the caller records (an audit event) in the same transaction as the
    positions that move past it.
    """
    try:
        return await consumer.getmany(*parts, timeout_ms=timeout_ms, max_records=max_records), []
    except NoOffsetForPartitionError as exc:
        fresh = [tp for tp in exc.args if isinstance(tp, TopicPartition)]
        if not fresh:
            raise
        await consumer.seek_to_beginning(*fresh)
        return {}, []
    except OffsetOutOfRangeError as exc:
        lost: dict[TopicPartition, int] = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        if not lost:
            raise
    starts = await consumer.beginning_offsets(list(lost))
    gaps = []
    for tp, offset in lost.items():
        # Past the end (a topic recreated empty) or before the start (retention, deleteRecords):
        # either way the earliest record still there is where reading can continue.
        start = starts[tp]
        consumer.seek(tp, start)
        gaps.append(Gap(tp.topic, tp.partition, offset, start))
        GAPS.labels(service, tp.topic).inc()
    return {}, gaps
