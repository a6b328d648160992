"""`qflare models …`: import a model file into the model store, list the store, export a model.

``import`` reads a safetensors file, a PyTorch ``state_dict`` or an ONNX file
(``qflare.ml.formats``), and publishes it, signed with the operator key, on the
model-store topic; the aggregator verifies it and keeps it in its store, and a
job may then name it (``--model NAME@VERSION``). ``export`` writes an imported
model, or a job's global model (``job:JOB_ID[@VERSION]``, verified as the
aggregator's), back to a file in any of the formats.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from qflare import operator
from qflare.errors import ModelFormatError, QflareError
from qflare.kafka import KafkaSettings, make_producer, prepare_topics
from qflare.ml.formats import (
    DEFAULT_MAX_BYTES,
    FORMATS,
    Format,
    ImportedModel,
    format_for,
    parse_format,
    read_model,
    write_model,
)
from qflare.protocol import Tensor, seal_chunked
from qflare.protocol.store import MODEL_NAME, MODEL_VERSION, StoredModel
from qflare_cli.keys import KEYS_DIR as KEYS
from qflare_cli.model_topics import job_models, stored_models
from services.aggregator.models import weights_tensors

app = typer.Typer(help="The model store: import, list and export models.", no_args_is_help=True)
console = Console()
JOB_REF = "job:"
FORMAT_HELP = f"auto, or one of {', '.join(FORMATS)}."


def stored_of(model: ImportedModel, name: str, version: str) -> StoredModel:
    """The ``stored_model`` body of an imported file."""
    for what, value, pattern in (("--name", name, MODEL_NAME), ("--version", version, MODEL_VERSION)):
        if not pattern.fullmatch(value):
            raise ModelFormatError(f"{value!r} does not match {pattern.pattern}", field=what)
    tensors = tuple(Tensor.of(n, a) for n, a in model.tensors.items())
    return StoredModel(name, version, model.format, tensors, model.graph, dict(model.metadata))


def imported_of(stored: StoredModel) -> ImportedModel:
    tensors = {t.name: np.asarray(t.array, dtype="<f4") for t in stored.tensors}
    return ImportedModel(tensors, parse_format(stored.format), stored.graph, stored.metadata)


def next_version(taken: list[str]) -> str:
    """One more than the largest numeric version taken ("1" for a new name)."""
    return str(max((int(v) for v in taken if v.isdigit()), default=0) + 1)


async def import_model(
    kafka: KafkaSettings,
    keys_dir: Path,
    file: Path,
    name: str,
    *,
    version: str | None = None,
    fmt: Format | str = "auto",
    exclude: list[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str:
    """Read ``file`` and publish it to the model store; returns ``NAME@VERSION``."""
    kind = "auto" if fmt == "auto" else parse_format(fmt)
    model = read_model(file, fmt=kind, exclude=exclude or (), max_bytes=max_bytes)
    taken = [m.version for m in await stored_models(kafka, keys_dir) if m.name == name]
    version = version or next_version(taken)
    if version in taken:
        raise ModelFormatError(
            f"{name}@{version} is imported already; choose another --version", field="version"
        )
    body = stored_of(model, name, version)
    ident = operator.operator_identity(keys_dir)
    spec = kafka.topics.model_store
    records = seal_chunked(body, ident.signer, spec.channel, sender=ident.name, limits=kafka.limits)
    await prepare_topics(kafka, [spec])
    producer = make_producer(kafka)
    await producer.start()
    try:
        for index, record in enumerate(records):
            await producer.send_and_wait(spec.name, record, key=f"{body.ref}:{index}".encode())
    finally:
        await producer.stop()
    return body.ref


async def export_model(
    kafka: KafkaSettings, keys_dir: Path, ref: str, out: Path, fmt: Format | str = "auto"
) -> Path:
    """Write the model ``ref`` (``NAME@VERSION`` or ``job:JOB_ID[@VERSION]``) to ``out``."""
    if ref.startswith(JOB_REF):
        model, label = await _job_model(kafka, keys_dir, ref.removeprefix(JOB_REF))
    else:
        found = await stored_models(kafka, keys_dir, ref)
        if not found:
            raise ModelFormatError(f"no model {ref!r} in the model store", field="ref")
        model, label = imported_of(found[0]), ref
    kind = parse_format(fmt) if fmt != "auto" else (format_for(out) or model.format)
    if kind == "onnx" and model.graph is None:
        raise ModelFormatError(
            f"{label} was not imported from ONNX, so there is no graph to write; "
            f"export it as {' or '.join(f for f in FORMATS if f != 'onnx')}",
            field="format",
        )
    return write_model(model, out, fmt=kind)


async def _job_model(kafka: KafkaSettings, keys_dir: Path, job_ref: str) -> tuple[ImportedModel, str]:
    """A job's global model (the latest version unless ``JOB_ID@VERSION``), with its import's graph."""
    job_id, _, wanted = job_ref.partition("@")
    versions = await job_models(kafka, keys_dir, job_id)
    if not versions:
        raise ModelFormatError(f"no global model of job {job_id!r} on the models topic", field="ref")
    if wanted and not wanted.isdigit():
        raise ModelFormatError(f"version {wanted!r} is not a number", field="ref")
    version = int(wanted) if wanted else max(versions)
    body = versions.get(version)
    if body is None:
        raise ModelFormatError(
            f"version {version} of job {job_id!r} is not on the models topic (there: {sorted(versions)})",
            field="ref",
        )
    # The weights alone: a version also carries the strategy's server groups (SCAFFOLD's control).
    tensors = {t.name: np.asarray(t.array, dtype="<f4") for t in weights_tensors(body)}
    source = str(body.metadata.get("model", ""))
    label = f"job {job_id!r} (model {source or 'unknown'})"
    imports = await stored_models(kafka, keys_dir, source) if "@" in source else []
    if not imports:  # a built-in: its tensors alone
        return ImportedModel(tensors, "safetensors"), label
    origin = imports[0]
    return ImportedModel(tensors, parse_format(origin.format), origin.graph, origin.metadata), label


def _fail(exc: QflareError) -> typer.Exit:
    # Plain text on stderr, unwrapped: the message names a file path and a regular expression.
    typer.echo(f"refused: {exc}", err=True)
    return typer.Exit(2)


@app.command("import")
def import_(
    file: Path = typer.Argument(
        ..., help="A .safetensors file, a torch.save'd state_dict, or an .onnx file."
    ),
    name: str = typer.Option(..., "--name", help="The model's name in the store."),
    version: str | None = typer.Option(None, "--version", help="Default: one more than the latest."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    exclude: list[str] | None = typer.Option(None, "--exclude", help="Leave out tensors matching REGEX."),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, envvar="QFLARE_MODEL_MAX_BYTES", min=1),
    keys_dir: Path = KEYS,
) -> None:
    """Import a model file into the model store; prints NAME@VERSION for `qflare jobs start --model`."""
    try:
        ref = asyncio.run(
            import_model(
                KafkaSettings(),
                keys_dir,
                file,
                name,
                version=version,
                fmt=fmt,
                exclude=exclude,
                max_bytes=max_bytes,
            )
        )
    except QflareError as exc:
        raise _fail(exc) from None
    typer.echo(ref)


@app.command("list")
def list_(keys_dir: Path = KEYS, as_json: bool = typer.Option(False, "--json")) -> None:
    """The imported models, verified as an operator's."""
    rows = [
        {
            "model": m.ref,
            "format": m.format,
            "tensors": len(m.tensors),
            "parameters": sum(t.array.size for t in m.tensors),
            "bytes": sum(t.array.nbytes for t in m.tensors),
        }
        for m in asyncio.run(stored_models(KafkaSettings(), keys_dir))
    ]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table("model", "format", "tensors", "parameters", "bytes", title="model store")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("model", "format", "tensors", "parameters", "bytes")))
    console.print(table)


@app.command("export")
def export(
    ref: str = typer.Argument(..., help="NAME@VERSION, or job:JOB_ID[@VERSION] (default: the latest)."),
    out: Path = typer.Option(..., "-o", "--output", help="The file to write."),
    fmt: str = typer.Option(
        "auto", "--format", help=f"{FORMAT_HELP} auto: from the file name, else the import's."
    ),
    keys_dir: Path = KEYS,
) -> None:
    """Write an imported model, or a job's trained global model, to a file."""
    try:
        path = asyncio.run(export_model(KafkaSettings(), keys_dir, ref, out, fmt))
    except QflareError as exc:
        raise _fail(exc) from None
    typer.echo(str(path))
