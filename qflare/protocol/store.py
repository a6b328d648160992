"""The body of an imported model: what the operator puts into the aggregator's model store."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from qflare.errors import SchemaError, TensorError
from qflare.protocol.body import Body, Fields, sorted_map
from qflare.protocol.tensors import Tensor

#: A stored model's name and version, as a job's ``model: "<name>@<version>"`` names them.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MODEL_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The file formats a model can be imported from (and exported to).
MODEL_FORMATS = frozenset({"safetensors", "torch", "onnx"})


@dataclass(frozen=True, slots=True)
class StoredModel(Body):
    """A model imported into the store, signed by an operator.

    ``tensors`` are float32 (``<f4``), in the model's order: a job on the model
    aggregates exactly these names, shapes and dtype, and its version 0 is these
    values. ``graph`` is, for an ONNX import, the ONNX model without the data of
    these tensors (so an export can rebuild the file); ``metadata`` is the source
    file's own string map (safetensors ``__metadata__``).
    """

    TYPE: ClassVar[str] = "stored_model"
    KEYS: ClassVar[tuple[str, ...]] = ("name", "version", "format", "tensors", "graph", "metadata")
    name: str
    version: str
    format: str
    tensors: tuple[Tensor, ...]
    graph: bytes | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``<name>@<version>``: how a job names the model, and the record key's stem."""
        return f"{self.name}@{self.version}"

    def to_body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "tensors": [t.to_wire() for t in self.tensors],
            "graph": self.graph,
            "metadata": sorted_map(self.metadata),
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        name = f.text("name", max_len=128, pattern=MODEL_NAME)
        version = f.text("version", max_len=64, pattern=MODEL_VERSION)
        fmt = f.choice("format", MODEL_FORMATS)
        tensors = f.tensors("tensors")
        graph = f.opt_view("graph")
        out = cls(
            name=name,
            version=version,
            format=fmt,
            tensors=tensors,
            graph=None if graph is None else bytes(graph),
            metadata=f.str_map("metadata"),
        )
        if not tensors:
            raise SchemaError("a model needs at least one tensor", field="body.tensors")
        for i, tensor in enumerate(tensors):
            # The exact sums the aggregator keeps are of float32 values.
            if tensor.dtype != "<f4":
                raise TensorError(
                    f"{tensor.name!r} is {tensor.dtype}, not <f4", field=f"body.tensors[{i}].dtype"
                )
        if (fmt == "onnx") != (graph is not None):
            raise SchemaError("an ONNX import carries its graph, and only an ONNX import", field="body.graph")
        return out

    def all_tensors(self) -> tuple[Tensor, ...]:
        return self.tensors
