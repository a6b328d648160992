"""Key files: format, permissions, refusal to overwrite, and errors naming the bad field."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qflare.crypto import ML_DSA_65, ML_KEM_768, generate_key, read_key, signature_backend, write_key
from qflare.errors import KeyFileError, KeyFileExistsError, KeyFormatError
from qflare_cli.keys import app


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_then_read_roundtrip(tmp_path: Path) -> None:
    key = generate_key()
    path = write_key(tmp_path / "k.json", key)
    assert _mode(path) == 0o600
    loaded = read_key(path)
    assert loaded == key
    doc = json.loads(path.read_text())
    assert set(doc) == {"format", "version", "alg", "key_id", "public_key", "seed", "created_ms"}
    assert doc["key_id"] == key.key_id.hex() and len(doc["key_id"]) == 32
    sig = loaded.signer().sign(b"m")
    assert signature_backend().verify(key.public_key, b"m", sig)


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k.json", generate_key())
    before = path.read_bytes()
    with pytest.raises(KeyFileExistsError) as info:
        write_key(path, generate_key())
    assert info.value.field == "path"
    assert path.read_bytes() == before
    replacement = generate_key()
    write_key(path, replacement, force=True)
    assert read_key(path) == replacement
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]


def test_kem_keys_and_public_only_files(tmp_path: Path) -> None:
    kem = generate_key(ML_KEM_768)
    assert read_key(write_key(tmp_path / "kem.json", kem)) == kem
    with pytest.raises(KeyFormatError):
        kem.signer()
    public = generate_key().public_only()
    assert read_key(write_key(tmp_path / "pub.json", public)) == public
    with pytest.raises(KeyFormatError) as info:
        public.signer()
    assert info.value.field == "seed"


def test_group_readable_private_key_is_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k.json", generate_key())
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as info:
        read_key(path)
    assert info.value.field == "mode"
    assert read_key(path, check_permissions=False).alg == ML_DSA_65


def _corrupt(tmp_path: Path, change: dict[str, object], drop: str | None = None) -> Path:
    doc = generate_key().to_json()
    doc.update(change)
    if drop:
        del doc[drop]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("change", "drop", "field"),
    [
        ({"format": "other"}, None, "format"),
        ({"version": 2}, None, "version"),
        ({"alg": "RSA"}, None, "alg"),
        ({}, "public_key", "public_key"),
        ({"public_key": "!!!"}, None, "public_key"),
        ({"public_key": base64.b64encode(b"x" * 10).decode()}, None, "public_key"),
        ({"seed": base64.b64encode(b"x" * 31).decode()}, None, "seed"),
        ({"seed": base64.b64encode(bytes(32)).decode()}, None, "seed"),
        ({"key_id": "00" * 16}, None, "key_id"),
        ({"created_ms": -1}, None, "created_ms"),
    ],
)
def test_corrupt_files_name_the_field(
    tmp_path: Path, change: dict[str, object], drop: str | None, field: str
) -> None:
    with pytest.raises(KeyFileError) as info:
        read_key(_corrupt(tmp_path, change, drop))
    assert info.value.field == field


def test_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        read_key(tmp_path / "missing.json")
    assert info.value.field == "path"
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"\xff\xfe not json")
    with pytest.raises(KeyFileError) as info:
        read_key(junk)
    assert info.value.field == "$"
    junk.write_text("[1, 2]")
    with pytest.raises(KeyFileError):
        read_key(junk)


def test_generate_rejects_unknown_alg_and_bad_seed() -> None:
    with pytest.raises(KeyFormatError):
        generate_key("RSA")
    with pytest.raises(KeyFormatError):
        generate_key(seed=b"x")
    assert generate_key(seed=bytes(32)).public_key == generate_key(seed=bytes(32)).public_key


def test_cli_gen_show_and_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "dev.key"
    result = runner.invoke(app, ["keys", "gen", "--out", str(path)])
    assert result.exit_code == 0, result.output
    key = read_key(path)
    assert key.key_id.hex() in result.output
    shown = runner.invoke(app, ["keys", "show", str(path)])
    assert shown.exit_code == 0
    assert key.key_id.hex() in shown.output
    assert ML_DSA_65 in shown.output
    assert key.seed is not None
    assert base64.b64encode(key.seed).decode() not in shown.output
    assert key.seed.hex() not in shown.output
    again = runner.invoke(app, ["keys", "gen", "--out", str(path)])
    assert again.exit_code == 1
    assert read_key(path) == key
    assert runner.invoke(app, ["keys", "gen", "--out", str(path), "--force"]).exit_code == 0
    assert read_key(path) != key


def test_cli_export_public_and_show_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    private = tmp_path / "dev.key"
    assert runner.invoke(app, ["keys", "gen", "--out", str(private)]).exit_code == 0
    public = tmp_path / "dev.pub"
    assert runner.invoke(app, ["keys", "export-public", str(private), "--out", str(public)]).exit_code == 0
    assert read_key(public).seed is None
    assert read_key(public).public_key == read_key(private).public_key
    bad = runner.invoke(app, ["keys", "show", str(tmp_path / "nope")])
    assert bad.exit_code == 1
