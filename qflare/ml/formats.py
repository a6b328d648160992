"""Model files in and out: safetensors, a PyTorch ``state_dict`` and ONNX, as named float32 tensors.

The server side never runs a user's code, so a model travels as data: its
tensors in a fixed order, plus (for ONNX) the graph without its weights, so
that a trained model can be written back as a working ONNX file. Only float32
is accepted, because that is what the aggregator's exact sums add up; any other
tensor is refused by name, with the hint to convert it or leave it out
(``exclude``, e.g. BatchNorm's ``num_batches_tracked``).

Reading is bounded before anything is parsed (``max_bytes``), and a PyTorch file
is loaded with ``weights_only=True``: a pickle that would run code is refused.
torch and onnx are imported only when their format is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast, get_args

import numpy as np
from numpy.typing import NDArray

from qflare.errors import ModelFormatError
from qflare.ml import model_files

Format = Literal["safetensors", "torch", "onnx"]
FORMATS: tuple[str, ...] = get_args(Format)
#: The largest model file read by default: the protocol's largest message body.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
Array = NDArray[np.float32]


@dataclass(frozen=True, slots=True, eq=False)
class ImportedModel:
    """Named float32 tensors in model order, the format they came from, and what else a rewrite needs."""

    tensors: Mapping[str, Array]
    format: Format
    #: ONNX only: the model without the data of the imported initialisers.
    graph: bytes | None = None
    #: safetensors only: the file's ``__metadata__`` (kept so a rewrite gives the same bytes).
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())


def read_model(
    path: Path | str,
    *,
    fmt: Format | Literal["auto"] = "auto",
    exclude: Iterable[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ImportedModel:
    """The model in ``path``; ``exclude`` holds regular expressions of tensor names to leave out.

    Raises ``ModelFormatError`` naming the file (and the tensor, in ``field``) for
    anything that is not a model this platform can aggregate.
    """
    file = Path(path)
    patterns = _patterns(exclude)
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise ModelFormatError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    if size > max_bytes:
        raise ModelFormatError(f"{file}: {size} bytes is over the limit of {max_bytes}")
    kind = _sniff(file) if fmt == "auto" else fmt
    if kind not in FORMATS:
        raise ModelFormatError(f"{file}: unknown format {kind!r}; use one of {', '.join(FORMATS)}")
    reader = {
        "safetensors": model_files.read_safetensors,
        "torch": model_files.read_torch,
        "onnx": model_files.read_onnx,
    }[kind]
    tensors, graph, metadata = reader(file, lambda name: _wanted(name, patterns))
    if not tensors:
        raise ModelFormatError(f"{file}: no tensors to import (all left out, or none in the file)")
    model = ImportedModel(
        {n: np.ascontiguousarray(a, dtype="<f4") for n, a in tensors.items()},
        cast(Format, kind),
        graph,
        metadata,
    )
    if model.nbytes > max_bytes:
        raise ModelFormatError(f"{file}: {model.nbytes} bytes of tensors is over the limit of {max_bytes}")
    return model


def write_model(model: ImportedModel, path: Path | str, *, fmt: Format | None = None) -> Path:
    """Write ``model`` as ``fmt`` (default: the format it was read from); returns the path."""
    file = Path(path)
    kind = fmt or model.format
    if kind == "safetensors":
        model_files.write_safetensors(file, model.tensors, model.metadata)
    elif kind == "torch":
        model_files.write_torch(file, model.tensors)
    elif kind == "onnx":
        if model.graph is None:
            raise ModelFormatError(
                f"{file}: an ONNX file needs the graph of an ONNX import; this model was "
                f"imported from {model.format}",
                field="format",
            )
        model_files.write_onnx(file, model.tensors, model.graph)
    else:
        raise ModelFormatError(f"{file}: unknown format {kind!r}; use one of {', '.join(FORMATS)}")
    return file


def parse_format(value: str) -> Format:
    """``value`` as a ``Format``, or ``ModelFormatError`` naming the choices."""
    if value not in FORMATS:
        raise ModelFormatError(f"unknown format {value!r}; use one of {', '.join(FORMATS)}", field="format")
    return cast(Format, value)


def format_for(path: Path | str) -> Format | None:
    """The format a file name's extension suggests, if any."""
    suffix = Path(path).suffix.lower()
    return cast(Format | None, _SUFFIXES.get(suffix))


_SUFFIXES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".onnx": "onnx"}


def _patterns(exclude: Iterable[str]) -> list[re.Pattern[str]]:
    out = []
    for pattern in exclude:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise ModelFormatError(f"not a regular expression: {pattern!r} ({exc})", field="exclude") from exc
    return out


def _wanted(name: str, patterns: list[re.Pattern[str]]) -> bool:
    return not any(p.search(name) for p in patterns)


def _sniff(file: Path) -> str:
    """The format of ``file`` from its first bytes (an ONNX file has no magic, so it comes last)."""
    with file.open("rb") as f:
        head = f.read(9)
    size = file.stat().st_size
    # torch.save writes a zip archive; the legacy format starts with a pickle protocol opcode.
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if model_files.looks_like_onnx(file):
        return "onnx"
    raise ModelFormatError(f"{file}: not a safetensors, PyTorch state_dict or ONNX file")
