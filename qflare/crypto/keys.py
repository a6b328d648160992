"""Key files: generate, write (mode 0600), read and check.

A key file is one UTF-8 JSON object (see docs/protocol.md, "Key files")::

    {"format": "qflare-key", "version": 1, "alg": "ML-DSA-65",
     "key_id": "<32 hex chars>", "public_key": "<base64>", "seed": "<base64>",
     "created_ms": 1700000000000}

Only the seed is stored, never an expanded private key: it is what FIPS 204/203
define as the portable form, and the public key is re-derived from it on load,
so a corrupt file is caught instead of producing unverifiable signatures.
A public-only file omits ``seed``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qflare.crypto.backends import kem_backend, signature_backend
from qflare.crypto.base import (
    ML_DSA_65,
    ML_KEM_768,
    MLDSA65_PUBLIC_KEY_BYTES,
    MLDSA65_SEED_BYTES,
    MLKEM768_PUBLIC_KEY_BYTES,
    MLKEM768_SEED_BYTES,
    Signer,
    fingerprint,
    key_id,
)
from qflare.errors import KeyFileError, KeyFileExistsError, KeyFormatError

FORMAT = "qflare-key"
FORMAT_VERSION = 1
_MAX_FILE_BYTES = 64 * 1024
#: alg -> (seed bytes, public key bytes)
_SIZES = {
    ML_DSA_65: (MLDSA65_SEED_BYTES, MLDSA65_PUBLIC_KEY_BYTES),
    ML_KEM_768: (MLKEM768_SEED_BYTES, MLKEM768_PUBLIC_KEY_BYTES),
}


def _public_from_seed(alg: str, seed: bytes) -> bytes:
    if alg == ML_DSA_65:
        return signature_backend().signer_from_seed(seed).public_key
    return kem_backend().public_key_from_seed(seed)


@dataclass(frozen=True, slots=True)
class KeyFile:
    """One key: its algorithm, raw public key and (for private files) the seed."""

    alg: str
    public_key: bytes
    seed: bytes | None
    created_ms: int

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def public_only(self) -> KeyFile:
        return KeyFile(self.alg, self.public_key, None, self.created_ms)

    def signer(self, backend: str | None = None) -> Signer:
        """A signer for this ML-DSA-65 key (default backend unless named)."""
        if self.alg != ML_DSA_65:
            raise KeyFormatError(f"{self.alg} keys cannot sign", field="alg")
        if self.seed is None:
            raise KeyFormatError("public-only key file cannot sign", field="seed")
        chosen = signature_backend(backend) if backend else signature_backend()
        return chosen.signer_from_seed(self.seed)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "alg": self.alg,
            "key_id": self.key_id.hex(),
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
        }
        if self.seed is not None:
            doc["seed"] = base64.b64encode(self.seed).decode("ascii")
        doc["created_ms"] = self.created_ms
        return doc


def generate_key(alg: str = ML_DSA_65, *, seed: bytes | None = None) -> KeyFile:
    """A new key of ``alg``; pass ``seed`` only for test vectors."""
    if alg not in _SIZES:
        raise KeyFormatError(f"unsupported algorithm {alg!r}", field="alg")
    seed_len = _SIZES[alg][0]
    seed = secrets.token_bytes(seed_len) if seed is None else seed
    if len(seed) != seed_len:
        raise KeyFormatError(f"expected {seed_len} bytes, got {len(seed)}", field="seed")
    return KeyFile(alg, _public_from_seed(alg, seed), seed, int(time.time() * 1000))


def write_key(path: str | os.PathLike[str], key: KeyFile, *, force: bool = False) -> Path:
    """Write ``key`` with mode 0600; refuse to replace an existing file unless ``force``."""
    target = Path(path)
    data = (json.dumps(key.to_json(), indent=2) + "\n").encode("utf-8")
    if not force:
        # O_EXCL makes "does not exist yet" and "create it" one atomic step.
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileExistsError(f"{target} exists; pass --force to replace it", field="path") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return target
    # Replace atomically so a crash never leaves a half-written key behind.
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _b64(doc: dict[str, Any], name: str, size: int) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str):
        raise KeyFileError("missing or not a base64 string", field=name)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"not valid base64 ({exc})", field=name) from exc
    if len(raw) != size:
        raise KeyFileError(f"expected {size} bytes, got {len(raw)}", field=name)
    return raw


def parse_key(doc: object) -> KeyFile:
    """Validate a decoded key document; every error names the offending field."""
    if not isinstance(doc, dict):
        raise KeyFileError("not a JSON object", field="$")
    if doc.get("format") != FORMAT:
        raise KeyFileError(f"expected {FORMAT!r}", field="format")
    if doc.get("version") != FORMAT_VERSION:
        raise KeyFileError(f"unsupported version {doc.get('version')!r}", field="version")
    alg = doc.get("alg")
    if not isinstance(alg, str) or alg not in _SIZES:
        raise KeyFileError(f"unsupported algorithm {alg!r}", field="alg")
    seed_len, pk_len = _SIZES[alg]
    public_key = _b64(doc, "public_key", pk_len)
    seed = _b64(doc, "seed", seed_len) if "seed" in doc else None
    created = doc.get("created_ms", 0)
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise KeyFileError("expected a non-negative integer", field="created_ms")
    if doc.get("key_id") != key_id(public_key).hex():
        raise KeyFileError("does not match SHA-256(public_key)[:16]", field="key_id")
    if seed is not None and _public_from_seed(alg, seed) != public_key:
        raise KeyFileError("public key does not derive from the seed", field="seed")
    return KeyFile(alg, public_key, seed, created)


def read_key(path: str | os.PathLike[str], *, check_permissions: bool = True) -> KeyFile:
    """Load and check a key file; private files readable by group/others are refused."""
    target = Path(path)
    try:
        info = target.stat()
        if info.st_size > _MAX_FILE_BYTES:
            raise KeyFileError(f"{target} is {info.st_size} bytes, larger than any key file", field="path")
        raw = target.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {target}: {exc.strerror}", field="path") from exc
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"{target} is not UTF-8 JSON ({exc})", field="$") from exc
    key = parse_key(doc)
    if check_permissions and key.seed is not None and os.name == "posix":
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFileError(f"{target} has mode {mode:o}; a private key must be 0600", field="mode")
    return key
