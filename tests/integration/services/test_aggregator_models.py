"""Models as data through the real services: import a file, train a job on it, export it back.

The operator's side is the CLI's own functions (``qflare models import|export``)
against the test's topics; the aggregator is the real process with its
PostgreSQL model store. Every comparison of tensors is of their bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from typer.testing import CliRunner

from qflare.errors import ModelFormatError
from qflare.kafka import KafkaSettings
from qflare.ml.formats import read_model
from qflare.protocol import Tensor
from qflare.protocol.control import AuditEvent
from qflare.protocol.store import StoredModel
from qflare_cli.main import app
from qflare_cli.model_topics import stored_models
from qflare_cli.models import export_model, import_model
from tests.integration.services.aggregator_harness import AggregatorProcess, ControlPlane, global_model
from tests.integration.services.harness import audit_events
from tests.model_samples import sample_tensors, write_onnx, write_safetensors, write_torch

SUFFIX = {"safetensors": ".safetensors", "torch": ".pt", "onnx": ".onnx"}
EXCLUDE = {"safetensors": [], "torch": ["num_batches_tracked"], "onnx": ["^shape$"]}


@pytest.fixture
def aggregator(kafka: KafkaSettings, keys_dir: Path, tmp_path: Path) -> Iterator[AggregatorProcess]:
    proc = AggregatorProcess(kafka, keys_dir, tmp_path / "aggregator.log", eval_examples=0)
    proc.start()
    yield proc
    proc.stop()


def _sources(folder: Path) -> dict[str, Path]:
    return {
        "safetensors": write_safetensors(folder / "net.safetensors", metadata={"source": "test"}),
        "torch": write_torch(folder / "net.pt", counter=True),
        "onnx": write_onnx(folder / "net.onnx"),
    }


def _same_bits(got: Mapping[str, NDArray[Any]], expected: Mapping[str, NDArray[Any]]) -> None:
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == np.float32 and got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), name


async def test_jobs_on_imported_models_start_from_their_tensors_and_export_back(
    kafka: KafkaSettings,
    keys_dir: Path,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QFLARE_KAFKA_TOPIC_PREFIX", kafka.topic_prefix)  # for the CLI's own settings
    sources = _sources(tmp_path)
    refs = {
        fmt: await import_model(kafka, keys_dir, path, f"net-{fmt}", exclude=EXCLUDE[fmt])
        for fmt, path in sources.items()
    }
    assert refs == {fmt: f"net-{fmt}@1" for fmt in sources}
    listed = {m.ref: m for m in await stored_models(kafka, keys_dir)}
    assert set(listed) == set(refs.values()) and listed["net-onnx@1"].graph is not None
    # A second import of a name takes the next version.
    again = await import_model(kafka, keys_dir, sources["safetensors"], "net-safetensors")
    assert again == "net-safetensors@2"

    for fmt, ref in refs.items():
        job = f"job-{fmt}-{unique}"
        if fmt == "torch":  # the operator's command, as typed (in a thread: it runs its own event loop)
            args = ["jobs", "start", "--job-id", job, "--model", ref, "--keys-dir", str(keys_dir)]
            result = await asyncio.to_thread(CliRunner().invoke, app, args)
            assert result.exit_code == 0, result.output
        else:
            await plane.start_job(job, model=ref)
        imported = read_model(sources[fmt], exclude=EXCLUDE[fmt])
        v0 = await global_model(kafka, keys_dir, job, 0)
        assert v0.metadata["model"] == ref
        _same_bits({t.name: t.array for t in v0.tensors}, dict(imported.tensors))
        assert set(imported.tensors) == set(sample_tensors())

        # Version 0 of the job, exported in the format it came from, holds the same bits.
        out = await export_model(kafka, keys_dir, f"job:{job}@0", tmp_path / f"v0-{fmt}{SUFFIX[fmt]}")
        _same_bits(dict(read_model(out, exclude=EXCLUDE[fmt]).tensors), dict(imported.tensors))
        # And so does the import itself, exported from the store.
        back = await export_model(kafka, keys_dir, ref, tmp_path / f"store-{fmt}{SUFFIX[fmt]}")
        _same_bits(dict(read_model(back, exclude=EXCLUDE[fmt]).tensors), dict(imported.tensors))
        if fmt == "safetensors":  # nothing trained: the very same file
            assert out.read_bytes() == sources[fmt].read_bytes() == back.read_bytes()
        if fmt == "onnx":
            import onnx

            onnx.checker.check_model(str(out))

    # No ONNX graph for a model that did not come from ONNX.
    with pytest.raises(ModelFormatError, match="not imported from ONNX"):
        await export_model(kafka, keys_dir, f"job:job-torch-{unique}", tmp_path / "x.onnx")


async def test_a_trained_onnx_model_exports_with_its_graph(
    kafka: KafkaSettings,
    keys_dir: Path,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    unique: str,
    tmp_path: Path,
) -> None:
    import onnx

    ref = await import_model(kafka, keys_dir, write_onnx(tmp_path / "net.onnx"), "mlp", exclude=["^shape$"])
    job = f"job-{unique}"
    await plane.start_job(job, model=ref)
    v0 = await global_model(kafka, keys_dir, job, 0)
    names = [t.name for t in v0.tensors]
    device = await plane.device(f"d-{unique}")
    await plane.open_round(job, 1, 0, [device.device_id], min_updates=1)
    trained = [t.array + np.float32(0.5) for t in v0.tensors]
    await plane.send(
        plane.topics.updates.name, device.device_id, *device.update(job, 1, 0, trained, 100, names=names)
    )
    v1 = await global_model(kafka, keys_dir, job, 1)
    # After a restart the job comes back from PostgreSQL with the stored model's layout.
    aggregator.stop()
    aggregator.start()
    await plane.open_round(job, 2, 1, [device.device_id], min_updates=1)
    again = [t.array + np.float32(0.25) for t in v1.tensors]
    await plane.send(
        plane.topics.updates.name, device.device_id, *device.update(job, 2, 1, again, 100, names=names)
    )
    await global_model(kafka, keys_dir, job, 2)
    out = await export_model(kafka, keys_dir, f"job:{job}@1", tmp_path / "trained.onnx")
    onnx.checker.check_model(str(out))
    model = read_model(out, exclude=["^shape$"])
    assert list(model.tensors) == names
    for tensor, want in zip(v1.tensors, trained, strict=True):
        assert model.tensors[tensor.name].tobytes() == tensor.array.tobytes()
        assert np.allclose(tensor.array, want, atol=1e-6)


async def test_bad_imports_and_unknown_models_are_refused_and_audited(
    kafka: KafkaSettings,
    keys_dir: Path,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    unique: str,
    tmp_path: Path,
) -> None:
    # A job on a model the store does not have.
    await plane.start_job(f"job-{unique}", model="ghost@1")
    # A model signed by a service that may not import models, and one reusing a stored version.
    ref = await import_model(kafka, keys_dir, write_safetensors(tmp_path / "a.safetensors"), "net")
    other = tuple(Tensor.of(n, a + np.float32(1)) for n, a in sample_tensors().items())
    spec = plane.topics.model_store
    for who, body in (
        ("scheduler", StoredModel("net", "9", "torch", other)),
        ("operator", StoredModel("net", "1", "torch", other)),
    ):
        await plane.send(spec.name, f"{body.ref}:0", plane._seal(who, body))

    wanted = {"unknown_model", "sender_not_allowed", "model_conflict"}

    def refused(events: list[AuditEvent]) -> dict[str, AuditEvent]:
        return {e.reason: e for e in events if e.source == "aggregator" and e.reason in wanted}

    events = await audit_events(kafka, keys_dir, lambda ev: set(refused(ev)) == wanted)
    found = refused(events)
    assert "ghost@1" in str(found["unknown_model"].detail["error"])
    assert found["unknown_model"].detail["field"] == "body.config.model"
    assert found["model_conflict"].detail["field"] == "body.version"
    imported = [e for e in events if e.event == "model.imported"]
    assert [e.subject for e in imported] == [ref]
    assert aggregator.alive


def test_a_file_that_is_no_model_is_refused_with_a_clear_message(tmp_path: Path, keys_dir: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("these are notes, not weights\n")
    result = CliRunner().invoke(
        app, ["models", "import", str(bad), "--name", "notes", "--keys-dir", str(keys_dir)]
    )
    assert result.exit_code == 2
    assert (
        "not a safetensors, PyTorch state_dict or ONNX file" in result.output and "notes.txt" in result.output
    )
    counter = write_torch(tmp_path / "bn.pt", counter=True)
    result = CliRunner().invoke(
        app, ["models", "import", str(counter), "--name", "bn", "--keys-dir", str(keys_dir)]
    )
    assert result.exit_code == 2 and "num_batches_tracked" in result.output and "--exclude" in result.output
