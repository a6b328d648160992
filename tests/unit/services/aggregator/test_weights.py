"""The aggregator's side of server-owned weights: device records in, a round's rule, weights out."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.crypto import generate_key
from qflare.errors import Rejected
from qflare.fl import JobSpec, Update
from qflare.protocol.devices import Device
from qflare.reasons import Reason
from services.aggregator.evaluation import Evaluator
from services.aggregator.weights import DeviceBook, RoundWeighting, check_sender, weigh

KEY = generate_key().public_key
JOB = {"model": "builtin:2nn", "dataset": "mnist"}


def _record(device_id: str, status: str = "active", declared: str | None = None, revision: int = 1) -> Device:
    labels = {} if declared is None else {"qflare.num_examples": declared}
    return Device(device_id, status, KEY, 1, 1, revision=revision, labels=labels)


def _update(device_id: str, claimed: int) -> Update:
    return Update(device_id, {"weights": [np.zeros(2, np.float32)]}, claimed)


def test_the_book_keeps_each_devices_latest_status_and_declared_size() -> None:
    book = DeviceBook()
    book.apply(_record("a", declared="600"))
    book.apply(_record("b", declared="not a number"))  # declares nothing usable
    book.apply(_record("c", declared="50"))
    book.apply(_record("c", "deleted", revision=2))
    book.apply(_record("a", "suspended", declared="600", revision=2))
    assert (book.status("a"), book.declared("a")) == ("suspended", 600)
    assert book.declared("b") is None and book.status("c") is None
    with pytest.raises(Rejected) as err:
        check_sender(book, "a")
    assert err.value.reason == Reason.SUSPENDED and err.value.field == "sender"
    check_sender(book, "b")


def test_a_rounds_rule_is_fixed_at_open_and_survives_a_round_trip_through_json() -> None:
    book = DeviceBook()
    for device, size in (("a", "100"), ("b", "200"), ("c", "100000")):
        book.apply(_record(device, declared=size))
    rw = RoundWeighting.open(JobSpec.parse({**JOB, "weight_cap": 2.0}), ["a", "b", "c"], book)
    assert rw.rule.cap == 400 and dict(rw.declared) == {"a": 100, "b": 200, "c": 100000}
    assert RoundWeighting.from_json(rw.to_json()) == rw
    # A later record does not move a round already open.
    book.apply(_record("c", declared="10", revision=2))
    assert weigh(_update("c", 90_000), rw, book).num_examples == 400
    assert weigh(_update("a", 80), rw, book).num_examples == 80
    with pytest.raises(Rejected) as err:
        weigh(_update("a", 101), rw, book)
    assert err.value.reason == Reason.OVER_CLAIM


def test_a_device_that_declared_after_the_round_opened_is_weighed_by_its_new_record() -> None:
    book = DeviceBook()
    book.apply(_record("a", declared="100"))
    rw = RoundWeighting.open(JobSpec.parse(JOB), ["a", "late"], book)
    with pytest.raises(Rejected) as err:
        weigh(_update("late", 10), rw, book)
    assert err.value.reason == Reason.UNDECLARED
    book.apply(_record("late", declared="20"))
    assert weigh(_update("late", 10), rw, book).num_examples == 10


def test_equal_weighting_weighs_one() -> None:
    rw = RoundWeighting.open(JobSpec.parse({**JOB, "weighting": "equal"}), ["a"], DeviceBook())
    assert weigh(_update("a", 500), rw, DeviceBook()).num_examples == 1


def test_fltrust_evaluation_leaves_the_root_set_out() -> None:
    from qflare.ml.rootset import root_indices

    evaluator = Evaluator(examples=300)
    plain_images, plain_labels = evaluator._split("mnist")
    images, labels = evaluator._split("mnist", root_size=100)
    assert len(labels) == len(plain_labels) == 300
    test_images, _ = evaluator._test["mnist"]
    root = {bytes(test_images[i].tobytes()) for i in root_indices(len(test_images), 100)}
    assert not any(image.tobytes() in root for image in images)
    assert any(image.tobytes() in root for image in plain_images)
