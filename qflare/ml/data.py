"""Datasets in the IDX format (MNIST, Fashion-MNIST), read strictly, never downloaded.

IDX layout (big-endian): two zero bytes, a dtype code, the number of dimensions
``d``, then ``d`` uint32 sizes, then the values in C order. Files may be gzipped.
Every header field is checked, and the payload must be exactly as long as the
header says, so a truncated or padded download fails loudly instead of training
on garbage. Errors are ``DatasetError`` with the file in the message and the bad
field in ``field``.

Where data lives: ``load_dataset(name, data_dir)`` reads ``data_dir`` if given;
otherwise ``$QFLARE_DATA_DIR/<name>/`` if that variable is set; otherwise the
dataset's default folder (``DEFAULT_DIRS``).

Normalisation: images stay uint8 in memory (4x smaller); ``to_float`` maps them
to float32 in [0, 1] by dividing by 255. That is the one scaling used everywhere
(training and evaluation), with no mean/std standardisation.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from qflare.errors import DatasetError

DatasetName = Literal["mnist", "fashion-mnist"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
DATA_DIR_ENV = "QFLARE_DATA_DIR"
DEFAULT_DIRS: dict[str, Path] = {
    "mnist": Path("/var/cache/qflare/datasets/mnist"),
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
}
NUM_CLASSES = 10

# IDX dtype code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Refuse headers that claim more than this, before allocating anything.
_MAX_BYTES = 1 << 31
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True, slots=True)
class Dataset:
    """uint8 images (N x 28 x 28) and int64 labels in [0, 10)."""

    name: str
    train_images: NDArray[np.uint8]
    train_labels: NDArray[np.int64]
    test_images: NDArray[np.uint8]
    test_labels: NDArray[np.int64]


def read_idx(path: Path) -> NDArray[Any]:
    """Read one IDX file (plain, or gzip when the name ends in ``.gz``) into a native-endian array."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file", field="path")
    gz = path.suffix == ".gz"
    try:
        with gzip.open(path, "rb") if gz else path.open("rb") as stream:
            return _parse(stream, path)
    except (OSError, EOFError, zlib.error) as exc:  # gzip reports corruption as these
        raise DatasetError(f"{path}: read failed: {exc}", field="gzip" if gz else "path") from exc


def _read_exact(stream: io.BufferedIOBase, size: int, path: Path, field: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise DatasetError(f"{path}: truncated: expected {size} bytes, found {len(data)}", field=field)
    return data


def _parse(stream: io.BufferedIOBase, path: Path) -> NDArray[Any]:
    zero, code, ndim = struct.unpack(">HBB", _read_exact(stream, 4, path, "magic"))
    if zero != 0:
        raise DatasetError(f"{path}: bad magic: first two bytes must be zero, got {zero:#06x}", field="magic")
    if code not in _IDX_DTYPES:
        raise DatasetError(f"{path}: unknown dtype code {code:#04x}", field="dtype")
    if not 1 <= ndim <= 4:
        raise DatasetError(f"{path}: unsupported number of dimensions {ndim}", field="ndim")
    dims = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path, "dims"))
    dtype = _IDX_DTYPES[code]
    size = math.prod(dims) * dtype.itemsize
    if size > _MAX_BYTES:
        raise DatasetError(f"{path}: header claims {size} bytes, above the {_MAX_BYTES} limit", field="dims")
    data = _read_exact(stream, size, path, "data")
    if stream.read(1):
        raise DatasetError(f"{path}: trailing bytes after the {size}-byte payload", field="data")
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{folder}: neither {stem} nor {stem}.gz exists", field="path")


def dataset_dir(name: str, data_dir: Path | None = None) -> Path:
    """The folder ``load_dataset`` reads: argument, then ``$QFLARE_DATA_DIR/<name>``, then the default."""
    if name not in DEFAULT_DIRS:
        raise DatasetError(f"unknown dataset {name!r}; known: {list(DATASET_NAMES)}", field="name")
    if data_dir is not None:
        return Path(data_dir)
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        folder = Path(root) / name
        if not folder.is_dir():
            raise DatasetError(f"{folder} does not exist (from {DATA_DIR_ENV}={root})", field=DATA_DIR_ENV)
        return folder
    return DEFAULT_DIRS[name]


def load_dataset(name: DatasetName, data_dir: Path | None = None) -> Dataset:
    """Load and validate a 28x28, 10-class IDX dataset (train and test splits)."""
    folder = dataset_dir(name, data_dir)
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in _FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = _find(folder, _FILES[f"{split}_images"])
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DatasetError(
                f"{where}: expected uint8 N x 28 x 28, got {images.dtype} {images.shape}", field="dims"
            )
        where = _find(folder, _FILES[f"{split}_labels"])
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(f"{where}: {labels.shape} labels for {len(images)} images", field="dims")
        if labels.size and not (int(labels.min()) >= 0 and int(labels.max()) < NUM_CLASSES):
            raise DatasetError(f"{where}: labels outside [0, {NUM_CLASSES})", field="data")
    return Dataset(
        name=name,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
    )


def to_float(images: NDArray[Any]) -> NDArray[np.float32]:
    """uint8 pixels -> float32 in [0, 1] (the single normalisation QFLARE uses)."""
    if images.dtype != np.uint8:
        raise DatasetError(f"expected uint8 pixels, got {images.dtype}", field="images")
    return images.astype(np.float32) / np.float32(255.0)
