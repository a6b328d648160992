"""The liboqs wrapper against a stand-in ``oqs`` module with liboqs-python's API.

The real library cannot be installed everywhere; this checks our side of the
contract (argument order, return order, length checks) wherever the tests run.
The stand-in computes with ``cryptography``, so results must agree with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from qflare.crypto import liboqs as wrapper
from qflare.crypto import signature_backend
from qflare.errors import KeyFormatError


class _Signature:
    def __init__(self, alg: str) -> None:
        assert alg == "ML-DSA-65"
        self._key: mldsa.MLDSA65PrivateKey | None = None

    def generate_keypair(self) -> bytes:
        self._key = mldsa.MLDSA65PrivateKey.generate()
        return self._key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        assert self._key is not None
        return self._key.sign(message)

    def verify(self, message: bytes, signature: bytes, public_key: bytes) -> bool:
        try:
            mldsa.MLDSA65PublicKey.from_public_bytes(public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class _KeyEncapsulation:
    def __init__(self, alg: str) -> None:
        assert alg == "ML-KEM-768"
        self._key: mlkem.MLKEM768PrivateKey | None = None

    def generate_keypair_seed(self, seed: bytes) -> bytes:
        self._key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        return self._key.public_key().public_bytes_raw()

    def encap_secret(self, public_key: bytes) -> tuple[bytes, bytes]:
        shared, ciphertext = mlkem.MLKEM768PublicKey.from_public_bytes(public_key).encapsulate()
        return ciphertext, shared  # liboqs order: (ciphertext, shared secret)

    def decap_secret(self, ciphertext: bytes) -> bytes:
        assert self._key is not None
        return self._key.decapsulate(ciphertext)


@pytest.fixture
def fake_oqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    module = SimpleNamespace(Signature=_Signature, KeyEncapsulation=_KeyEncapsulation)
    monkeypatch.setattr(wrapper, "load_oqs", lambda: module)
    yield


@pytest.mark.usefixtures("fake_oqs")
def test_wrapper_signs_and_verifies_across_backends() -> None:
    backend = wrapper.OqsSignatureBackend()
    signer = backend.generate_signer()
    sig = signer.sign(b"m")
    assert signature_backend("cryptography").verify(signer.public_key, b"m", sig)
    other = signature_backend("cryptography").signer_from_seed(bytes(32))
    assert backend.verify(other.public_key, b"m", other.sign(b"m"))
    assert not backend.verify(other.public_key, b"x", other.sign(b"m"))
    with pytest.raises(KeyFormatError):
        backend.verify(b"short", b"m", sig)
    with pytest.raises(KeyFormatError):
        backend.signer_from_seed(bytes(32))


@pytest.mark.usefixtures("fake_oqs")
def test_wrapper_kem_returns_secret_and_ciphertext_in_our_order() -> None:
    kem = wrapper.OqsKemBackend()
    seed = bytes(range(64))
    public = kem.public_key_from_seed(seed)
    enc = kem.encapsulate(public)
    assert len(enc.shared_secret) == 32
    assert len(enc.ciphertext) == 1088
    assert kem.decapsulate(seed, enc.ciphertext) == enc.shared_secret
