"""Which backends exist on this machine, and picking one by name."""

from __future__ import annotations

import functools

from qflare.crypto import liboqs, pyca
from qflare.crypto.base import KemBackend, SignatureBackend
from qflare.errors import BackendUnavailableError

DEFAULT_BACKEND = pyca.NAME


@functools.cache
def signature_backends() -> dict[str, SignatureBackend]:
    """Every usable ML-DSA-65 backend by name; ``cryptography`` is always present."""
    found: dict[str, SignatureBackend] = {pyca.NAME: pyca.PycaSignatureBackend()}
    if liboqs.load_oqs() is not None:
        found[liboqs.NAME] = liboqs.OqsSignatureBackend()
    return found


@functools.cache
def kem_backends() -> dict[str, KemBackend]:
    """Every usable ML-KEM-768 backend by name; ``cryptography`` is always present."""
    found: dict[str, KemBackend] = {pyca.NAME: pyca.PycaKemBackend()}
    if liboqs.load_oqs() is not None:
        found[liboqs.NAME] = liboqs.OqsKemBackend()
    return found


def signature_backend(name: str = DEFAULT_BACKEND) -> SignatureBackend:
    try:
        return signature_backends()[name]
    except KeyError:
        raise BackendUnavailableError(
            f"signature backend {name!r} is not available (have: {', '.join(signature_backends())})",
            field="backend",
        ) from None


def kem_backend(name: str = DEFAULT_BACKEND) -> KemBackend:
    try:
        return kem_backends()[name]
    except KeyError:
        raise BackendUnavailableError(
            f"KEM backend {name!r} is not available (have: {', '.join(kem_backends())})", field="backend"
        ) from None
