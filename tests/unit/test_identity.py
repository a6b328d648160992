"""Key files per identity: a missing key is an error, created only on request."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from qflare.errors import KeyFileError
from qflare.identity import PRINCIPALS, init_identities, key_path, load_identity, trusted_ring


def test_a_missing_key_is_refused_naming_the_path_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as caught:
        load_identity("registry", tmp_path)
    text = str(caught.value)
    assert str(tmp_path / "registry" / "registry.key") in text and "qflare keys init" in text
    assert not (tmp_path / "registry").exists()


def test_init_creates_one_private_directory_per_identity_and_keeps_existing_keys(tmp_path: Path) -> None:
    created = init_identities(tmp_path)
    assert created == [key_path(name, tmp_path) for name in PRINCIPALS]
    for name in PRINCIPALS:
        path = key_path(name, tmp_path)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = load_identity("scheduler", tmp_path).key.key_id
    assert init_identities(tmp_path) == []
    assert load_identity("scheduler", tmp_path).key.key_id == before
    assert len(trusted_ring(tmp_path)) == len(PRINCIPALS)


@pytest.mark.parametrize("name", ["", "trusted", "../x", ".hidden"])
def test_names_that_cannot_be_a_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError):
        key_path(name, tmp_path)
