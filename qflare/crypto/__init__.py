"""Post-quantum signatures (ML-DSA-65) and key encapsulation (ML-KEM-768)."""

from qflare.crypto.backends import kem_backend, kem_backends, signature_backend, signature_backends
from qflare.crypto.base import (
    ML_DSA_65,
    ML_KEM_768,
    Encapsulation,
    KemBackend,
    SignatureBackend,
    Signer,
    key_id,
)
from qflare.crypto.keys import KeyFile, generate_key, read_key, write_key

__all__ = [
    "ML_DSA_65",
    "ML_KEM_768",
    "Encapsulation",
    "KemBackend",
    "KeyFile",
    "SignatureBackend",
    "Signer",
    "generate_key",
    "kem_backend",
    "kem_backends",
    "key_id",
    "read_key",
    "signature_backend",
    "signature_backends",
    "write_key",
]
