"""What devices report in their updates, read back as ``qflare demo`` reads it (real Kafka)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qflare.fl import FedProxParams, JobSpec
from qflare.identity import TrustedKeys
from qflare.kafka import KafkaSettings
from qflare.ml import init_weights, tensor_names
from qflare.protocol import Tensor, seal_chunked
from qflare.protocol.training import ModelUpdate
from qflare_cli.reports import DeviceReports, describe
from tests.integration.services.aggregator_harness import ControlPlane, SimDevice


def _update(device: SimDevice, job: str, mu: float, *, chunk_bytes: int | None = None) -> list[bytes]:
    weights = init_weights("2nn", 0)
    tensors = tuple(Tensor.of(n, np.asarray(w)) for n, w in zip(tensor_names("2nn"), weights, strict=True))
    body = ModelUpdate(job, 1, device.device_id, 0, 10, tensors, {"loss": 0.5, "proximal_mu": mu})
    return seal_chunked(
        body, device.signer, device.channel, sender=device.device_id, round=1, chunk_bytes=chunk_bytes
    )


async def test_reports_show_what_each_device_signed(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, unique: str
) -> None:
    job, updates = f"job-{unique}", plane.topics.updates.name
    spec = JobSpec.parse({"strategy": {"name": "fedprox", "proximal_mu": 0.02}})
    assert isinstance(spec.strategy, FedProxParams)
    a = await plane.device(f"a-{unique}")
    b = await plane.device(f"b-{unique}")
    # A record the registry did not sign gives its key no voice.
    forged = await plane.device(f"f-{unique}", sender="operator")
    await plane.send(updates, a.device_id, *_update(a, job, 0.02, chunk_bytes=300_000))  # chunked
    await plane.send(updates, b.device_id, *_update(b, job, 0.02))
    await plane.send(updates, forged.device_id, *_update(forged, job, 9.0))
    await plane.send(updates, a.device_id, *_update(a, f"other-{unique}", 7.0))  # another job

    reports = DeviceReports.of(kafka, TrustedKeys(keys_dir), job, spec.strategy)
    assert reports is not None and reports.shown == ["proximal_mu"]
    await reports.start()
    try:
        values = await reports.values(1, expected=2)
    finally:
        await reports.stop()
    assert values == {"proximal_mu": [0.02, 0.02]}
    assert describe(values, 2) == ["devices trained with proximal_mu = 0.02 (reported in 2 of 2 updates)"]
    assert DeviceReports.of(kafka, TrustedKeys(keys_dir), job, JobSpec().strategy) is None  # FedAvg: nothing
