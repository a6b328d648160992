"""ML-DSA-65 and ML-KEM-768 through the ``cryptography`` package (OpenSSL).

This is the default backend: it is a hard dependency, it imports seeds
directly, and its signing is hedged (randomised) as FIPS 204 recommends.
"""

from __future__ import annotations

import functools
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from qflare.crypto.base import (
    ML_DSA_65,
    ML_KEM_768,
    MLDSA65_PUBLIC_KEY_BYTES,
    MLDSA65_SEED_BYTES,
    MLKEM768_CIPHERTEXT_BYTES,
    MLKEM768_PUBLIC_KEY_BYTES,
    MLKEM768_SEED_BYTES,
    Encapsulation,
    key_id,
)
from qflare.errors import CryptoError, KeyFormatError

NAME = "cryptography"


def _check_len(value: bytes, expected: int, what: str) -> None:
    if len(value) != expected:
        raise KeyFormatError(f"expected {expected} bytes, got {len(value)}", field=what)


# Parsing a 1952-byte public key is not free and the same few keys verify
# thousands of messages, so parsed keys are cached (bounded, by raw bytes).
@functools.lru_cache(maxsize=4096)
def _public(public_key: bytes) -> mldsa.MLDSA65PublicKey:
    _check_len(public_key, MLDSA65_PUBLIC_KEY_BYTES, "public_key")
    try:
        return mldsa.MLDSA65PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise KeyFormatError(str(exc), field="public_key") from exc


class PycaSigner:
    """Signs with an ML-DSA-65 key held by OpenSSL."""

    def __init__(self, private: mldsa.MLDSA65PrivateKey) -> None:
        self._private = private
        self._public_key = private.public_key().public_bytes_raw()
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

    @property
    def seed(self) -> bytes:
        """The FIPS 204 seed; only this backend can export it."""
        return self._private.private_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


class PycaSignatureBackend:
    """ML-DSA-65 via ``cryptography``."""

    @property
    def name(self) -> str:
        return NAME

    @property
    def alg(self) -> str:
        return ML_DSA_65

    def signer_from_seed(self, seed: bytes) -> PycaSigner:
        _check_len(seed, MLDSA65_SEED_BYTES, "seed")
        return PycaSigner(mldsa.MLDSA65PrivateKey.from_seed_bytes(seed))

    def generate_signer(self) -> PycaSigner:
        return self.signer_from_seed(secrets.token_bytes(MLDSA65_SEED_BYTES))

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        key = _public(bytes(public_key))
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class PycaKemBackend:
    """ML-KEM-768 via ``cryptography``."""

    @property
    def name(self) -> str:
        return NAME

    @property
    def alg(self) -> str:
        return ML_KEM_768

    def _private(self, seed: bytes) -> mlkem.MLKEM768PrivateKey:
        _check_len(seed, MLKEM768_SEED_BYTES, "seed")
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)

    def public_key_from_seed(self, seed: bytes) -> bytes:
        return self._private(seed).public_key().public_bytes_raw()

    def encapsulate(self, public_key: bytes) -> Encapsulation:
        _check_len(public_key, MLKEM768_PUBLIC_KEY_BYTES, "public_key")
        try:
            key = mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
        except ValueError as exc:
            raise KeyFormatError(str(exc), field="public_key") from exc
        shared, ciphertext = key.encapsulate()
        return Encapsulation(shared_secret=shared, ciphertext=ciphertext)

    def decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) != MLKEM768_CIPHERTEXT_BYTES:
            raise CryptoError(
                f"expected {MLKEM768_CIPHERTEXT_BYTES} bytes, got {len(ciphertext)}", field="ciphertext"
            )
        return self._private(seed).decapsulate(ciphertext)
