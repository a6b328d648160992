"""Enrolment secrets: the token's MAC key and id, the token MAC, and rotation proofs.

A device never sends its enrolment token. It derives a MAC key from it
(``SHA-256(token)``, which is also what the operator hands the registry), sends
that key's id so the registry can find it, and a MAC over the device id and key
id it enrols. A captured enrolment therefore enrols nothing else: a different
device id or key does not match the MAC.

A key rotation is proven by the device's current key: it signs the same kind of
binding over the new key id.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from qflare.crypto.backends import signature_backend
from qflare.crypto.base import KEY_ID_BYTES, Signer

TOKEN_ID_BYTES = 16
TOKEN_MAC_BYTES = 32
TOKEN_MAC_DOMAIN = "qflare.enrolment-token.v1"
ROTATION_DOMAIN = "qflare.key-rotation.v1"


def token_key(token: str) -> bytes:
    """The MAC key of a token: SHA-256 of its UTF-8 bytes (what the registry stores)."""
    return hashlib.sha256(token.encode()).digest()


def token_id(key: bytes) -> bytes:
    """The public id of a token's MAC key: the first 16 bytes of SHA-256 over the key."""
    return hashlib.sha256(key).digest()[:TOKEN_ID_BYTES]


def binding(domain: str, scope: str, device_id: str, kid: bytes) -> bytes:
    """The bytes a token MAC or rotation proof covers.

    Each part is a 2-byte big-endian length and its bytes, so no two
    different tuples encode alike: domain, scope (the deployment), device id, key id.
    """
    if len(kid) != KEY_ID_BYTES:
        raise ValueError(f"key id must be {KEY_ID_BYTES} bytes")
    parts = (domain.encode(), scope.encode(), device_id.encode(), kid)
    return b"".join(struct.pack(">H", len(p)) + p for p in parts)


def token_mac(key: bytes, scope: str, device_id: str, kid: bytes) -> bytes:
    return hmac.new(key, binding(TOKEN_MAC_DOMAIN, scope, device_id, kid), hashlib.sha256).digest()


def token_mac_ok(key: bytes, scope: str, device_id: str, kid: bytes, mac: bytes) -> bool:
    # Constant time: a timing difference must not let a device guess the MAC byte by byte.
    return hmac.compare_digest(token_mac(key, scope, device_id, kid), mac)


def rotation_proof(current: Signer, scope: str, device_id: str, new_kid: bytes) -> bytes:
    """The current key's signature over the new key id."""
    return current.sign(binding(ROTATION_DOMAIN, scope, device_id, new_kid))


def rotation_proof_ok(
    current_public_key: bytes, scope: str, device_id: str, new_kid: bytes, proof: bytes
) -> bool:
    message = binding(ROTATION_DOMAIN, scope, device_id, new_kid)
    return signature_backend().verify(current_public_key, message, proof)
