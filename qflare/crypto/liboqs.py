"""ML-DSA-65 and ML-KEM-768 through liboqs-python (``import oqs``).

liboqs-python downloads and compiles liboqs from the internet when it cannot
find the shared library at import time. A verifier must never do that, so this
module looks for the library itself, loads it with ctypes, and only then imports
``oqs``; if anything is missing the backend is simply unavailable.

Limitation: liboqs has no seed import for ML-DSA (only for ML-KEM), so this
backend cannot sign with a key file (which stores the FIPS 204 seed). It signs
with keys it generates itself (expanded form, kept in memory) and verifies any
raw public key; signatures verify across backends in both directions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from qflare.crypto.base import (
    ML_DSA_65,
    ML_KEM_768,
    MLDSA65_PUBLIC_KEY_BYTES,
    MLKEM768_CIPHERTEXT_BYTES,
    MLKEM768_PUBLIC_KEY_BYTES,
    MLKEM768_SEED_BYTES,
    Encapsulation,
    key_id,
)
from qflare.errors import BackendUnavailableError, CryptoError, KeyFormatError

NAME = "liboqs"


def _candidates() -> list[str]:
    """The places liboqs-python itself searches, in its order."""
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    found: list[str] = []
    for name in ("oqs", "liboqs"):
        hit = ctypes.util.find_library(name)
        if hit:
            found.append(hit)
    root = Path(os.environ["OQS_INSTALL_PATH"]) if "OQS_INSTALL_PATH" in os.environ else Path.home() / "_oqs"
    found.extend(str(root / sub / f"liboqs{suffix}") for sub in ("lib", "lib64"))
    return found


def find_liboqs() -> str | None:
    """Path of a loadable liboqs shared library, or None. Never downloads anything."""
    for path in _candidates():
        try:
            ctypes.CDLL(path)
        except OSError:
            continue
        return path
    return None


@functools.cache
def load_oqs() -> ModuleType | None:
    """The ``oqs`` module if both it and the shared library are present, else None."""
    if importlib.util.find_spec("oqs") is None or find_liboqs() is None:
        return None
    try:
        return importlib.import_module("oqs")
    except (ImportError, AttributeError, OSError):
        # A liboqs too old for the bindings fails at import (missing symbol):
        # the backend is then unavailable, never a crash of the default one.
        return None


def _require() -> Any:
    module = load_oqs()
    if module is None:
        raise BackendUnavailableError("liboqs-python or the liboqs shared library is not installed")
    return module


class OqsSigner:
    """Signs with an ML-DSA-65 key generated inside liboqs (expanded secret key)."""

    def __init__(self) -> None:
        self._sig = _require().Signature(ML_DSA_65)
        self._public_key = bytes(self._sig.generate_keypair())
        self._key_id = key_id(self._public_key)

    @property
    def alg(self) -> str:
        return ML_DSA_65

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def sign(self, message: bytes) -> bytes:
        return bytes(self._sig.sign(bytes(message)))


class OqsSignatureBackend:
    """ML-DSA-65 via liboqs. Construct only when ``load_oqs()`` is not None."""

    def __init__(self) -> None:
        self._verifier = _require().Signature(ML_DSA_65)

    @property
    def name(self) -> str:
        return NAME

    @property
    def alg(self) -> str:
        return ML_DSA_65

    def signer_from_seed(self, seed: bytes) -> OqsSigner:
        raise KeyFormatError(
            "liboqs cannot import an ML-DSA seed; sign key files with the 'cryptography' backend",
            field="seed",
        )

    def generate_signer(self) -> OqsSigner:
        return OqsSigner()

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(public_key) != MLDSA65_PUBLIC_KEY_BYTES:
            raise KeyFormatError(
                f"expected {MLDSA65_PUBLIC_KEY_BYTES} bytes, got {len(public_key)}", field="public_key"
            )
        return bool(self._verifier.verify(bytes(message), bytes(signature), bytes(public_key)))


class OqsKemBackend:
    """ML-KEM-768 via liboqs (needs liboqs >= 0.14 for seeded key generation)."""

    def __init__(self) -> None:
        self._oqs = _require()

    @property
    def name(self) -> str:
        return NAME

    @property
    def alg(self) -> str:
        return ML_KEM_768

    def _kem_from_seed(self, seed: bytes) -> tuple[Any, bytes]:
        if len(seed) != MLKEM768_SEED_BYTES:
            raise KeyFormatError(f"expected {MLKEM768_SEED_BYTES} bytes, got {len(seed)}", field="seed")
        kem = self._oqs.KeyEncapsulation(ML_KEM_768)
        if not hasattr(kem, "generate_keypair_seed"):
            raise BackendUnavailableError("this liboqs-python cannot derive ML-KEM keys from a seed")
        return kem, bytes(kem.generate_keypair_seed(bytes(seed)))

    def public_key_from_seed(self, seed: bytes) -> bytes:
        return self._kem_from_seed(seed)[1]

    def encapsulate(self, public_key: bytes) -> Encapsulation:
        if len(public_key) != MLKEM768_PUBLIC_KEY_BYTES:
            raise KeyFormatError(
                f"expected {MLKEM768_PUBLIC_KEY_BYTES} bytes, got {len(public_key)}", field="public_key"
            )
        ciphertext, shared = self._oqs.KeyEncapsulation(ML_KEM_768).encap_secret(bytes(public_key))
        return Encapsulation(shared_secret=bytes(shared), ciphertext=bytes(ciphertext))

    def decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) != MLKEM768_CIPHERTEXT_BYTES:
            raise CryptoError(
                f"expected {MLKEM768_CIPHERTEXT_BYTES} bytes, got {len(ciphertext)}", field="ciphertext"
            )
        kem, _ = self._kem_from_seed(seed)
        return bytes(kem.decap_secret(bytes(ciphertext)))
