"""The ACL table covers every topic: a topic missing from it would be writable by nobody
(services fail at run time) or, worse, granted ad hoc."""

from __future__ import annotations

import dataclasses

from qflare.kafka_acls import FLOWS, bindings
from qflare.protocol.topics import Topics


def test_every_topic_has_writers_and_readers_named() -> None:
    assert set(FLOWS) == {field.name for field in dataclasses.fields(Topics)}


def test_only_the_registry_writes_devices_and_only_the_audit_service_writes_heads() -> None:
    writes = {(b.principal, b.name) for b in bindings("p.") if b.op.name == "WRITE"}
    assert {who for who, name in writes if name == "p.qflare.devices"} == {"registry"}
    assert {who for who, name in writes if name == "p.qflare.audit.heads"} == {"audit"}
    device_writes = {name for who, name in writes if who == "device"}
    assert device_writes == {"p.qflare.device.enrollments", "p.qflare.device.heartbeats", "p.qflare.updates"}


def test_the_aggregator_is_the_only_service_writing_registry_commands() -> None:
    writes = {(b.principal, b.name) for b in bindings("p.") if b.op.name == "WRITE"}
    assert {who for who, name in writes if name == "p.qflare.control.registry"} == {"aggregator"}
