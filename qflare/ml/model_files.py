"""The three model file formats, one reader and one writer each (``qflare.ml.formats`` is the API).

Each reader takes the file and a predicate of the tensor names to keep, and
returns the kept tensors in model order, the ONNX graph (or None) and the
safetensors metadata (or an empty map). A tensor that is kept must be float32;
any other is refused here, by name, before its data is converted.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import ModelFormatError

Tensors = dict[str, NDArray[np.float32]]
Read = tuple[Tensors, bytes | None, dict[str, str]]
Keep = Callable[[str], bool]


def refuse_dtype(file: Path, name: str, dtype: str) -> ModelFormatError:
    return ModelFormatError(
        f"{file}: tensor {name!r} is {dtype}; only float32 is supported: convert it, "
        f"or leave it out with --exclude '^{re.escape(name)}$'",
        field=name,
    )


def _bad(file: Path, what: str) -> ModelFormatError:
    return ModelFormatError(f"{file}: {what}")


# --- safetensors ---------------------------------------------------------------------


def read_safetensors(file: Path, keep: Keep) -> Read:
    """Tensors in the order of their data in the file (the writer's order, stable on rewrite)."""
    data = file.read_bytes()
    if len(data) < 8:
        raise _bad(file, "not a safetensors file (shorter than its header length)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise _bad(file, f"not a safetensors file (header of {size} bytes in a {len(data)}-byte file)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(file, f"not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise _bad(file, "not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad(file, "safetensors __metadata__ must map strings to strings")
    entries: list[tuple[int, str, str, list[int], int]] = []
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = isinstance(dtype, str) and all(isinstance(d, int) and d >= 0 for d in shape)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ModelFormatError(f"{file}: malformed header entry for tensor {name!r}", field=name)
        entries.append((start, name, dtype, list(shape), end))
    base = 8 + size
    tensors: Tensors = {}
    for start, name, dtype, shape, end in sorted(entries):
        if not keep(name):
            continue
        if dtype != "F32":
            raise refuse_dtype(file, name, dtype)
        count = math.prod(shape)
        if end - start != count * 4 or base + end > len(data):
            raise ModelFormatError(f"{file}: tensor {name!r} has the wrong number of bytes", field=name)
        array = np.frombuffer(data, dtype="<f4", count=count, offset=base + start)
        tensors[name] = array.reshape(shape).copy()
    return tensors, None, dict(metadata)


def write_safetensors(file: Path, tensors: Mapping[str, NDArray[Any]], metadata: Mapping[str, str]) -> None:
    from safetensors.numpy import save_file

    arrays = {n: np.ascontiguousarray(a, dtype="<f4") for n, a in tensors.items()}
    save_file(arrays, str(file), metadata=dict(metadata) or None)


# --- PyTorch state_dict -------------------------------------------------------------

#: What a corrupt file or a pickle of code makes ``torch.load`` raise.
_TORCH_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    zipfile.BadZipFile,
    KeyError,
)


def read_torch(file: Path, keep: Keep) -> Read:
    """A ``state_dict`` saved with ``torch.save``, loaded with ``weights_only=True`` (no code runs)."""
    import torch

    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _bad(file, f"not a PyTorch state_dict that loads without running code ({first})") from exc
    if not isinstance(loaded, Mapping):
        raise _bad(file, f"not a state_dict: the file holds a {type(loaded).__name__}, not a map of tensors")
    tensors: Tensors = {}
    for name, value in loaded.items():
        if not isinstance(name, str):
            raise _bad(file, f"not a state_dict: key {name!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise ModelFormatError(
                f"{file}: not a state_dict: {name!r} holds a {type(value).__name__}, not a tensor "
                "(save model.state_dict(), not a whole checkpoint)",
                field=name,
            )
        if not keep(name):
            continue
        if value.dtype != torch.float32 or value.layout != torch.strided:
            raise refuse_dtype(file, name, str(value.dtype).removeprefix("torch."))
        tensors[name] = value.detach().contiguous().numpy().copy()
    return tensors, None, {}


def write_torch(file: Path, tensors: Mapping[str, NDArray[Any]]) -> None:
    import torch

    state = OrderedDict((n, torch.from_numpy(np.array(a, dtype=np.float32))) for n, a in tensors.items())
    torch.save(state, file)


# --- ONNX ------------------------------------------------------------------------------


def looks_like_onnx(file: Path) -> bool:
    """True when ``file`` parses as an ONNX model with a graph (protobuf has no magic number)."""
    return _load_onnx(file, strict=False) is not None


def _load_onnx(file: Path, *, strict: bool) -> Any:
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    try:
        proto = onnx.load_model(str(file), load_external_data=True)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        if strict:
            raise _bad(file, f"not an ONNX file ({exc})") from exc
        return None
    # Many byte strings parse as some protobuf message: a model has an IR version and a graph.
    if (
        proto.ir_version <= 0
        or not proto.HasField("graph")
        or not (proto.graph.node or proto.graph.initializer)
    ):
        if strict:
            raise _bad(file, "not an ONNX file (no IR version or no graph)")
        return None
    return proto


def read_onnx(file: Path, keep: Keep) -> Read:
    """The graph's initialisers in graph order; the graph is kept without their data."""
    from onnx import TensorProto, numpy_helper

    proto = _load_onnx(file, strict=True)
    tensors: Tensors = {}
    for init in proto.graph.initializer:
        name = init.name
        if not keep(name):
            continue  # left in the graph with its data: a rewrite carries it unchanged
        if name in tensors:
            raise ModelFormatError(f"{file}: two initialisers are named {name!r}", field=name)
        if init.data_type != TensorProto.FLOAT:
            raise refuse_dtype(file, name, TensorProto.DataType.Name(init.data_type).lower())
        tensors[name] = np.array(numpy_helper.to_array(init), dtype="<f4")
        # The weights travel as tensors; the graph keeps only each initialiser's name, type and dims.
        for part in ("raw_data", "float_data", "external_data"):
            init.ClearField(part)
        init.data_location = TensorProto.DEFAULT
    return tensors, proto.SerializeToString(), {}


def write_onnx(file: Path, tensors: Mapping[str, NDArray[Any]], graph: bytes) -> None:
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import TensorProto

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(graph)
    except DecodeError as exc:
        raise _bad(file, f"the stored ONNX graph does not parse ({exc})") from exc
    placed: set[str] = set()
    for init in proto.graph.initializer:
        array = tensors.get(init.name)
        if array is None:
            empty = not (init.raw_data or init.float_data or init.external_data)
            if init.data_type == TensorProto.FLOAT and empty and math.prod(init.dims) > 0:
                raise ModelFormatError(f"{file}: no tensor for initialiser {init.name!r}", field=init.name)
            continue
        if tuple(array.shape) != tuple(init.dims):
            raise ModelFormatError(
                f"{file}: tensor {init.name!r} has shape {tuple(array.shape)}, the graph "
                f"wants {tuple(init.dims)}",
                field=init.name,
            )
        init.raw_data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        placed.add(init.name)
    extra = [n for n in tensors if n not in placed]
    if extra:
        raise ModelFormatError(
            f"{file}: tensor {extra[0]!r} is not an initialiser of the graph", field=extra[0]
        )
    file.write_bytes(proto.SerializeToString())
