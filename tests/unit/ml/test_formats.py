"""Model files: bit-exact round trips in every format, and a typed refusal for every bad input."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from qflare.errors import ModelFormatError
from qflare.ml.formats import ImportedModel, format_for, parse_format, read_model, write_model
from tests.model_samples import sample_tensors, write_onnx, write_safetensors, write_torch


def _same(model: ImportedModel, expected: Mapping[str, NDArray[np.float32]]) -> None:
    assert set(model.names) == set(expected)
    for name, array in expected.items():
        got = model.tensors[name]
        assert got.dtype == np.dtype("<f4") and got.shape == array.shape, name
        assert got.tobytes() == array.tobytes(), name


def test_safetensors_round_trip_gives_the_same_file(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "m.safetensors", metadata={"framework": "pt"})
    model = read_model(src)
    assert model.format == "safetensors" and model.graph is None
    assert model.metadata == {"framework": "pt"}
    _same(model, sample_tensors())
    out = write_model(model, tmp_path / "out.safetensors")
    assert out.read_bytes() == src.read_bytes()


def test_torch_round_trip_keeps_order_and_bits(tmp_path: Path) -> None:
    src = write_torch(tmp_path / "m.pt")
    model = read_model(src)
    assert model.format == "torch" and model.names == tuple(sample_tensors())
    _same(model, sample_tensors())
    again = read_model(write_model(model, tmp_path / "out.pt"))
    assert again.names == model.names
    _same(again, sample_tensors())


def test_onnx_round_trip_rebuilds_a_working_graph(tmp_path: Path) -> None:
    import onnx

    src = write_onnx(tmp_path / "m.onnx")
    model = read_model(src, exclude=["^shape$"])
    assert model.format == "onnx" and model.graph is not None
    # Initialisers in graph order; the graph itself carries none of their data.
    assert model.names == tuple(sample_tensors())
    assert len(model.graph) < src.stat().st_size
    _same(model, sample_tensors())
    out = write_model(model, tmp_path / "out.onnx")
    onnx.checker.check_model(str(out))
    again = read_model(out, exclude=["^shape$"])
    _same(again, sample_tensors())
    # The left-out int64 initialiser travelled inside the graph, unchanged.
    from onnx import numpy_helper

    shapes = [i for i in onnx.load(str(out)).graph.initializer if i.name == "shape"]
    assert numpy_helper.to_array(shapes[0]).tolist() == [1, 5]


def test_trained_tensors_replace_the_imported_ones(tmp_path: Path) -> None:
    model = read_model(write_onnx(tmp_path / "m.onnx"), exclude=["^shape$"])
    trained = {n: a + np.float32(1) for n, a in model.tensors.items()}
    out = write_model(ImportedModel(trained, "onnx", model.graph), tmp_path / "t.onnx")
    _same(read_model(out, exclude=["^shape$"]), trained)


def test_other_formats_by_choice(tmp_path: Path) -> None:
    model = read_model(write_torch(tmp_path / "m.pt"))
    _same(read_model(write_model(model, tmp_path / "m.st", fmt="safetensors")), sample_tensors())
    assert format_for("x.ONNX") == "onnx" and format_for("x.pth") == "torch" and format_for("x.bin") is None
    assert parse_format("torch") == "torch"
    with pytest.raises(ModelFormatError, match="unknown format 'keras'") as info:
        parse_format("keras")
    assert info.value.field == "format"


def test_a_non_float32_tensor_is_refused_by_name_unless_left_out(tmp_path: Path) -> None:
    src = write_torch(tmp_path / "m.pt", counter=True)
    with pytest.raises(ModelFormatError, match=r"num_batches_tracked' is int64.*--exclude") as info:
        read_model(src)
    assert info.value.field == "norm.num_batches_tracked"
    assert "norm.num_batches_tracked" not in read_model(src, exclude=["num_batches_tracked"]).names
    with pytest.raises(ModelFormatError, match="'shape' is int64"):
        read_model(write_onnx(tmp_path / "m.onnx"))


def test_safetensors_of_another_dtype_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, dtype=np.float16)}, str(tmp_path / "h.safetensors"))
    with pytest.raises(ModelFormatError, match="'w' is F16") as info:
        read_model(tmp_path / "h.safetensors")
    assert info.value.field == "w"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a safetensors, PyTorch state_dict or ONNX file"),
        (b"hello, this is not a model\n", "not a safetensors, PyTorch state_dict or ONNX file"),
        (b"PK\x03\x04truncated zip", "not a PyTorch state_dict"),
        ((12).to_bytes(8, "little") + b"{not json at all", "not a safetensors file"),
    ],
)
def test_a_file_that_is_no_model_is_refused_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(content)
    with pytest.raises(ModelFormatError, match=message) as info:
        read_model(bad)
    assert str(bad) in str(info.value)


def test_a_pickle_of_code_is_refused(tmp_path: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("ran code",))

    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelFormatError, match="loads without running code"):
        read_model(tmp_path / "evil.pt")
    with (tmp_path / "legacy.pt").open("wb") as f:
        pickle.dump(Evil(), f, protocol=2)
    with pytest.raises(ModelFormatError, match="loads without running code"):
        read_model(tmp_path / "legacy.pt")


def test_a_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    import torch

    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelFormatError, match="'model' holds a dict, not a tensor"):
        read_model(tmp_path / "ckpt.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ModelFormatError, match="holds a list"):
        read_model(tmp_path / "list.pt")


def test_limits_and_options(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "m.safetensors")
    with pytest.raises(ModelFormatError, match="over the limit of 100"):
        read_model(src, max_bytes=100)
    with pytest.raises(ModelFormatError, match="cannot read"):
        read_model(tmp_path / "missing.pt")
    with pytest.raises(ModelFormatError, match="no tensors to import"):
        read_model(src, exclude=["."])
    with pytest.raises(ModelFormatError, match="not a regular expression") as info:
        read_model(src, exclude=["("])
    assert info.value.field == "exclude"
    model = read_model(src)
    with pytest.raises(ModelFormatError, match="needs the graph of an ONNX import"):
        write_model(model, tmp_path / "m.onnx", fmt="onnx")


def test_onnx_export_refuses_tensors_that_do_not_fit_the_graph(tmp_path: Path) -> None:
    model = read_model(write_onnx(tmp_path / "m.onnx"), exclude=["^shape$"])
    wrong = dict(model.tensors)
    wrong["head.bias"] = np.zeros(4, dtype=np.float32)
    with pytest.raises(ModelFormatError, match=r"'head\.bias' has shape"):
        write_model(ImportedModel(wrong, "onnx", model.graph), tmp_path / "w.onnx")
    missing = {n: a for n, a in model.tensors.items() if n != "head.bias"}
    with pytest.raises(ModelFormatError, match=r"no tensor for initialiser 'head\.bias'"):
        write_model(ImportedModel(missing, "onnx", model.graph), tmp_path / "w.onnx")
