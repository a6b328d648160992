"""IDX loading: the real files, and every malformed header or payload raising a typed error."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from qflare.errors import DatasetError
from qflare.ml import Dataset, load_dataset, read_idx, to_float
from qflare.ml.data import DATA_DIR_ENV, DEFAULT_DIRS, dataset_dir


def _idx(array: NDArray[np.uint8], code: int = 0x08) -> bytes:
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_set(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files = {
            f"{prefix}-images-idx3-ubyte": _idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            f"{prefix}-labels-idx1-ubyte": _idx(rng.integers(0, 10, n, dtype=np.uint8)),
        }
        for name, data in files.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)


def test_real_mnist_shapes_and_types(mnist: Dataset) -> None:
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_images.dtype == np.uint8 and mnist.train_labels.dtype == np.int64
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    assert list(mnist.train_labels[:5]) == [5, 0, 4, 1, 9]  # the well-known first digits
    assert np.bincount(mnist.train_labels).min() > 5000


def test_real_fashion_mnist_gz() -> None:
    assert DEFAULT_DIRS["fashion-mnist"].is_dir(), (
        "`make setup` installs the Debian package dataset-fashion-mnist"
    )
    data = load_dataset("fashion-mnist")
    assert data.train_images.shape == (60000, 28, 28) and data.test_labels.shape == (10000,)
    assert set(np.unique(data.train_labels)) == set(range(10))


@pytest.mark.parametrize("gz", [False, True])
def test_synthetic_set_plain_and_gz(tmp_path: Path, gz: bool) -> None:
    _write_set(tmp_path, gz=gz)
    data = load_dataset("mnist", tmp_path)
    assert data.train_images.shape == (12, 28, 28) and data.test_labels.shape == (5,)


def test_env_var_names_a_root_with_one_folder_per_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_set(tmp_path / "fashion-mnist", n_train=3)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert load_dataset("fashion-mnist").train_images.shape == (3, 28, 28)
    assert dataset_dir("fashion-mnist", Path("/elsewhere")) == Path("/elsewhere")  # the argument wins
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist")  # no <root>/mnist
    assert info.value.field == DATA_DIR_ENV


def _expect(path: Path, field: str) -> str:
    with pytest.raises(DatasetError) as info:
        read_idx(path)
    assert info.value.field == field
    assert str(path) in str(info.value)
    return str(info.value)


GOOD = _idx(np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (GOOD[:-1], "data"),  # truncated payload
        (GOOD + b"\0", "data"),  # trailing bytes
        (GOOD[:2], "magic"),  # truncated header
        (GOOD[:10], "dims"),
        (b"\x08\x03" + GOOD[2:], "magic"),  # bad magic
        (GOOD[:2] + b"\x07" + GOOD[3:], "dtype"),
        (GOOD[:3] + b"\x00" + GOOD[4:], "ndim"),
        (struct.pack(">HBBIII", 0, 8, 3, 100000, 28, 28 * 1000), "dims"),  # absurd size, nothing allocated
    ],
)
def test_malformed_files(tmp_path: Path, data: bytes, field: str) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)
    _expect(path, field)


def test_malformed_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(GOOD)[:-20])
    _expect(path, "gzip")
    path.write_bytes(b"not gzip at all")
    _expect(path, "gzip")
    path.write_bytes(gzip.compress(GOOD[:-5]))
    _expect(path, "data")


def test_missing_files_and_bad_contents(tmp_path: Path) -> None:
    _expect(tmp_path / "nope", "path")
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path)
    assert info.value.field == "path"
    _write_set(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx(np.full(12, 11, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="labels outside"):
        load_dataset("mnist", tmp_path)
    labels.write_bytes(_idx(np.zeros(11, dtype=np.uint8)))
    with pytest.raises(DatasetError, match=r"\(11,\) labels for 12 images"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar", tmp_path)  # type: ignore[arg-type]
    assert info.value.field == "name"


def test_other_idx_dtypes_are_native_endian(tmp_path: Path) -> None:
    path = tmp_path / "f.idx"
    values = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=">f4")
    path.write_bytes(struct.pack(">HBBII", 0, 0x0D, 2, 2, 2) + values.tobytes())
    out = read_idx(path)
    assert out.dtype == np.float32 and out.dtype.isnative and np.array_equal(out, values)


def test_to_float_scales_to_unit_interval() -> None:
    pixels = np.array([[0, 255, 51]], dtype=np.uint8)
    out = to_float(pixels)
    assert out.dtype == np.float32 and np.allclose(out, [[0.0, 1.0, 0.2]])
    with pytest.raises(DatasetError):
        to_float(out)
