"""ML-DSA-65 / ML-KEM-768 backends: behaviour of each, and agreement between them."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from qflare.crypto import ML_DSA_65, kem_backend, kem_backends, key_id, signature_backend, signature_backends
from qflare.crypto import liboqs as oqs_backend
from qflare.crypto.base import (
    MLDSA65_PUBLIC_KEY_BYTES,
    MLDSA65_SIGNATURE_BYTES,
    MLKEM768_CIPHERTEXT_BYTES,
    MLKEM768_PUBLIC_KEY_BYTES,
    SignatureBackend,
    fingerprint,
)
from qflare.errors import BackendUnavailableError, CryptoError, KeyFormatError

SEED = bytes(range(32))
KEM_SEED = bytes(range(64))
HAVE_OQS = "liboqs" in signature_backends()
needs_oqs = pytest.mark.skipif(
    not HAVE_OQS,
    reason="liboqs shared library not found (liboqs-python would download and build it; "
    "the backend is treated as unavailable and cross-backend checks cannot run here)",
)
SIG_BACKENDS = sorted(signature_backends())


@pytest.mark.parametrize("name", SIG_BACKENDS)
def test_sign_verify_roundtrip(name: str) -> None:
    backend = signature_backend(name)
    signer = backend.generate_signer()
    assert signer.alg == ML_DSA_65
    assert len(signer.public_key) == MLDSA65_PUBLIC_KEY_BYTES
    assert signer.key_id == hashlib.sha256(signer.public_key).digest()[:16]
    sig = signer.sign(b"message")
    assert len(sig) == MLDSA65_SIGNATURE_BYTES
    assert backend.verify(signer.public_key, b"message", sig)
    assert not backend.verify(signer.public_key, b"messagf", sig)
    assert not backend.verify(signer.public_key, b"message", sig[:-1])
    assert not backend.verify(signer.public_key, b"message", b"")
    assert not backend.verify(signer.public_key, b"message", bytes([sig[0] ^ 1]) + sig[1:])


@pytest.mark.parametrize("name", SIG_BACKENDS)
def test_verify_rejects_malformed_public_key(name: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        signature_backend(name).verify(b"\x00" * 10, b"m", b"s")
    assert info.value.field == "public_key"


def test_seed_gives_the_same_key_every_time() -> None:
    backend = signature_backend("cryptography")
    a, b = backend.signer_from_seed(SEED), backend.signer_from_seed(SEED)
    assert a.public_key == b.public_key
    assert a.key_id == key_id(a.public_key)
    assert backend.signer_from_seed(bytes(32)).public_key != a.public_key


def test_seed_of_wrong_length_is_refused() -> None:
    with pytest.raises(KeyFormatError) as info:
        signature_backend().signer_from_seed(b"short")
    assert info.value.field == "seed"


def test_fingerprint_is_full_sha256() -> None:
    pk = signature_backend().signer_from_seed(SEED).public_key
    assert fingerprint(pk).replace(":", "") == hashlib.sha256(pk).hexdigest()


def test_unknown_backend_names_what_is_available() -> None:
    with pytest.raises(BackendUnavailableError, match="cryptography"):
        signature_backend("nope")
    with pytest.raises(BackendUnavailableError):
        kem_backend("nope")


@pytest.mark.parametrize("name", sorted(kem_backends()))
def test_kem_roundtrip(name: str) -> None:
    kem = kem_backend(name)
    public = kem.public_key_from_seed(KEM_SEED)
    assert len(public) == MLKEM768_PUBLIC_KEY_BYTES
    enc = kem.encapsulate(public)
    assert len(enc.ciphertext) == MLKEM768_CIPHERTEXT_BYTES
    assert kem.decapsulate(KEM_SEED, enc.ciphertext) == enc.shared_secret
    # ML-KEM's implicit rejection: a wrong key yields a different secret, not an error.
    assert kem.decapsulate(bytes(64), enc.ciphertext) != enc.shared_secret


@pytest.mark.parametrize("name", sorted(kem_backends()))
def test_kem_rejects_bad_lengths(name: str) -> None:
    kem = kem_backend(name)
    with pytest.raises(CryptoError) as info:
        kem.decapsulate(KEM_SEED, b"short")
    assert info.value.field == "ciphertext"
    with pytest.raises(KeyFormatError):
        kem.encapsulate(b"short")
    with pytest.raises(KeyFormatError):
        kem.public_key_from_seed(b"short")


def test_liboqs_detection_never_imports_oqs_without_the_library(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path))
    assert oqs_backend.find_liboqs() is None
    oqs_backend.load_oqs.cache_clear()
    try:
        before = "oqs" in sys.modules
        assert oqs_backend.load_oqs() is None
        assert ("oqs" in sys.modules) == before
    finally:
        oqs_backend.load_oqs.cache_clear()


@pytest.mark.skipif(HAVE_OQS, reason="liboqs is installed here")
def test_liboqs_backend_reports_unavailable() -> None:
    with pytest.raises(BackendUnavailableError):
        oqs_backend.OqsSignatureBackend()
    with pytest.raises(BackendUnavailableError):
        signature_backend("liboqs")


def _pair() -> tuple[SignatureBackend, SignatureBackend]:
    return signature_backend("cryptography"), signature_backend("liboqs")


@needs_oqs
def test_cross_backend_signatures_verify_both_ways() -> None:
    pyca, oqs = _pair()
    seeded = pyca.signer_from_seed(SEED)
    assert oqs.verify(seeded.public_key, b"m", seeded.sign(b"m"))
    generated = oqs.generate_signer()
    sig = generated.sign(b"m")
    assert pyca.verify(generated.public_key, b"m", sig)
    assert not pyca.verify(generated.public_key, b"x", sig)


@needs_oqs
def test_liboqs_cannot_import_a_seed() -> None:
    with pytest.raises(KeyFormatError) as info:
        signature_backend("liboqs").signer_from_seed(SEED)
    assert info.value.field == "seed"


@needs_oqs
def test_cross_backend_kem_agrees() -> None:
    pyca, oqs = kem_backend("cryptography"), kem_backend("liboqs")
    assert pyca.public_key_from_seed(KEM_SEED) == oqs.public_key_from_seed(KEM_SEED)
    public = pyca.public_key_from_seed(KEM_SEED)
    enc = oqs.encapsulate(public)
    assert pyca.decapsulate(KEM_SEED, enc.ciphertext) == enc.shared_secret
    enc = pyca.encapsulate(public)
    assert oqs.decapsulate(KEM_SEED, enc.ciphertext) == enc.shared_secret
