"""Small model files in each supported format, for the import/export tests (unit and integration).

The same seeded tensors go into every format, so tests can compare what each
import yields against one expected set.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


def sample_tensors(seed: int = 0) -> OrderedDict[str, NDArray[np.float32]]:
    """A tiny two-layer network's float32 weights, in module order (odd values, -0.0 included)."""
    rng = np.random.default_rng(seed)
    out: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
    out["encoder.weight"] = rng.standard_normal((8, 5)).astype(np.float32)
    out["encoder.bias"] = np.array([-0.0, 1e-38, 3.5, -2.25, 100.0, 0, 7, -1], dtype=np.float32)
    out["head.weight"] = rng.standard_normal((3, 8)).astype(np.float32)
    out["head.bias"] = rng.standard_normal(3).astype(np.float32)
    return out


def write_safetensors(path: Path, seed: int = 0, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.numpy import save_file

    save_file(dict(sample_tensors(seed)), str(path), metadata=metadata)
    return path


def write_torch(path: Path, seed: int = 0, *, counter: bool = False) -> Path:
    """A ``state_dict``; ``counter`` adds an int64 BatchNorm-style ``num_batches_tracked``."""
    import torch

    state = OrderedDict((n, torch.from_numpy(a.copy())) for n, a in sample_tensors(seed).items())
    if counter:
        state["norm.num_batches_tracked"] = torch.tensor(3, dtype=torch.int64)
    torch.save(state, path)
    return path


def write_onnx(path: Path, seed: int = 0) -> Path:
    """``head(relu(encoder(x)))`` in ONNX, plus an int64 shape constant (an initialiser but no weight)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    t = sample_tensors(seed)
    inits = [numpy_helper.from_array(a, name) for name, a in t.items()]
    inits.append(numpy_helper.from_array(np.array([1, 5], dtype=np.int64), "shape"))
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "encoder.weight", "encoder.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "head.weight", "head.bias"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "sample",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path))
    return path
