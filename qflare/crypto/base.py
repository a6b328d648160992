"""The crypto interfaces every backend implements, and the facts they share.

Both algorithms are pinned to one parameter set each (ML-DSA-65, ML-KEM-768):
one set means one wire format, and a receiver never negotiates.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Protocol, runtime_checkable

ML_DSA_65 = "ML-DSA-65"
ML_KEM_768 = "ML-KEM-768"

#: FIPS 204 sizes for ML-DSA-65.
MLDSA65_PUBLIC_KEY_BYTES = 1952
MLDSA65_SIGNATURE_BYTES = 3309
MLDSA65_SEED_BYTES = 32
#: FIPS 203 sizes for ML-KEM-768; the private seed is d || z.
MLKEM768_PUBLIC_KEY_BYTES = 1184
MLKEM768_CIPHERTEXT_BYTES = 1088
MLKEM768_SEED_BYTES = 64
MLKEM_SHARED_SECRET_BYTES = 32

#: ``key_id`` is this many leading bytes of SHA-256(raw public key).
KEY_ID_BYTES = 16


def key_id(public_key: bytes) -> bytes:
    """The 16-byte key id: the first 16 bytes of SHA-256 over the raw public key."""
    return hashlib.sha256(public_key).digest()[:KEY_ID_BYTES]


def fingerprint(public_key: bytes) -> str:
    """Full SHA-256 of the raw public key, as colon-separated hex pairs for humans."""
    digest = hashlib.sha256(public_key).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


@runtime_checkable
class Signer(Protocol):
    """Holds one private key and signs with it."""

    @property
    def alg(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    @property
    def key_id(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes:
        """Sign ``message`` (pure ML-DSA, empty context)."""
        ...


class SignatureBackend(Protocol):
    """An ML-DSA-65 implementation."""

    @property
    def name(self) -> str: ...

    @property
    def alg(self) -> str: ...

    def signer_from_seed(self, seed: bytes) -> Signer:
        """A signer for the FIPS 204 32-byte seed; raises ``KeyFormatError`` if unsupported."""
        ...

    def generate_signer(self) -> Signer:
        """A signer for a fresh random key."""
        ...

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """True only for a valid signature; malformed input is just ``False``.

        A malformed *public key* raises ``KeyFormatError`` instead: it comes from
        our own key cache, so it is a configuration fault, not a hostile message.
        """
        ...


class Encapsulation(NamedTuple):
    """Result of ML-KEM encapsulation (order fixed here because backends disagree)."""

    shared_secret: bytes
    ciphertext: bytes


class KemBackend(Protocol):
    """An ML-KEM-768 implementation working on the 64-byte seed form of private keys."""

    @property
    def name(self) -> str: ...

    @property
    def alg(self) -> str: ...

    def public_key_from_seed(self, seed: bytes) -> bytes: ...

    def encapsulate(self, public_key: bytes) -> Encapsulation: ...

    def decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes: ...
