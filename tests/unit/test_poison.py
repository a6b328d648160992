"""The poison-record policy: what a failure stands for, what is retried, and the report rate limit."""

from __future__ import annotations

import psycopg
from aiokafka.errors import KafkaConnectionError

from qflare.errors import LimitError, TensorError, UnknownKeyError
from qflare.poison import UNVERIFIED, Tally, printable, rejection, retry
from qflare.reasons import Reason


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_any_error_of_one_record_is_a_typed_rejection() -> None:
    assert rejection(TensorError("bad", field="t")).reason == Reason.TENSOR
    numpy_like = ValueError("array is too big; `arr.size * arr.dtype.itemsize` is larger than the maximum")
    assert rejection(numpy_like).reason == Reason.UNHANDLED
    assert "ValueError" in str(rejection(numpy_like))
    nul = psycopg.errors.DataError("invalid byte sequence for encoding UTF8: 0x00")
    assert rejection(nul).reason == Reason.STORE_REFUSED
    assert not retry(nul) and not retry(numpy_like)


def test_transient_errors_are_retried_but_a_records_own_fault_never_is() -> None:
    assert retry(KafkaConnectionError("broker away"))
    assert retry(psycopg.OperationalError("server closed the connection"))
    assert retry(KeyboardInterrupt())
    # Retriable as a protocol error (the key may arrive later), but for the record: a rejection.
    assert not retry(UnknownKeyError(b"\x01" * 8))


def test_printable_has_no_nul() -> None:
    assert printable("dev\x00ice") == "dev\ufffdice"
    assert len(printable("x" * 1000)) == 256


def test_a_thousand_garbage_records_cost_a_bounded_number_of_reports() -> None:
    clock = Clock()
    tally = Tally("test", window_s=60, reports_per_window=5, clock=clock)
    reasons = [Reason.SCHEMA, Reason.SIGNATURE, Reason.LIMIT]
    reported = sum(tally.note("t", None, reasons[i % 3]) for i in range(1000))
    assert reported == 15
    assert tally.due() == []  # the window is still open
    clock.now += 60_000
    summaries = tally.due()
    assert len(summaries) == 3
    assert sum(s.count for s in summaries) == 1000 and sum(s.suppressed for s in summaries) == 985
    assert {s.source for s in summaries} == {UNVERIFIED}
    assert tally.note("t", None, Reason.SCHEMA)  # a new window reports again


def test_made_up_sources_share_one_overflow_bucket() -> None:
    tally = Tally("test", reports_per_window=1, max_sources=10, clock=Clock())
    reported = sum(tally.note("t", f"dev-{i}", Reason.LIMIT) for i in range(1000))
    assert reported == 11  # ten tracked senders, then one overflow bucket
    summaries = tally.due(flush=True)
    assert [(s.source, s.count) for s in summaries] == [("*", 990)]


def test_a_window_with_nothing_left_out_needs_no_summary() -> None:
    tally = Tally("test", reports_per_window=5, clock=Clock())
    tally.note("t", "dev", Reason.LIMIT)
    assert tally.due(flush=True) == []


def test_limit_errors_keep_their_reason() -> None:
    assert rejection(LimitError("x")).reason == Reason.LIMIT
    assert not retry(LimitError("x"))
