"""Service and operator identities: their own key, and the public keys they trust.

Every message on every topic is signed. Services and operators sign with a key
file of their own (``<keys_dir>/<name>.key``, mode 0600) and publish the public
half as ``<keys_dir>/trusted/<name>.pub``. A service builds the key ring for
control-plane messages (device records, operator commands) from that trusted
directory; device keys come only from the compacted device topic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from qflare.crypto import KeyFile, Signer, generate_key, read_key, write_key
from qflare.errors import KeyFileError
from qflare.protocol import KeyRing
from qflare.protocol.decoder import KnownKey

DEFAULT_KEYS_DIR = Path(".qflare/keys")


@dataclass(frozen=True)
class Identity:
    name: str
    key: KeyFile
    signer: Signer


def load_identity(name: str, keys_dir: Path = DEFAULT_KEYS_DIR, *, create: bool = True) -> Identity:
    """Read ``<keys_dir>/<name>.key``, creating it (and its trusted .pub) when absent."""
    path = keys_dir / f"{name}.key"
    if not path.exists():
        if not create:
            raise KeyFileError(f"{path} does not exist; run `qflare keys gen --out {path}`", field="path")
        keys_dir.mkdir(parents=True, exist_ok=True)
        write_key(path, generate_key())
    key = read_key(path)
    publish_trusted(name, key, keys_dir)
    return Identity(name, key, key.signer())


def publish_trusted(name: str, key: KeyFile, keys_dir: Path = DEFAULT_KEYS_DIR) -> Path:
    trusted = keys_dir / "trusted"
    trusted.mkdir(parents=True, exist_ok=True)
    target = trusted / f"{name}.pub"
    write_key(target, key.public_only(), force=True)
    target.chmod(0o644)
    return target


def trusted_ring(keys_dir: Path = DEFAULT_KEYS_DIR, names: set[str] | None = None) -> KeyRing:
    """A key ring of the trusted public keys; ``names`` limits it to some principals."""
    ring = KeyRing()
    for pub in sorted((keys_dir / "trusted").glob("*.pub")):
        if names is None or pub.stem in names:
            key = read_key(pub)
            ring.add(pub.stem, key.public_key, key.alg)
    return ring


class TrustedKeys:
    """A ``KeyLookup`` over the trusted directory that notices keys added later.

    An operator key created after a service started (``qflare devices token`` on
    a fresh machine) must be accepted without a restart, so an unknown key id
    triggers a re-read of the directory, at most once per ``reload_s``.
    """

    def __init__(self, keys_dir: Path = DEFAULT_KEYS_DIR, *, reload_s: float = 1.0) -> None:
        self.keys_dir = keys_dir
        self.reload_s = reload_s
        self._ring = trusted_ring(keys_dir)
        self._loaded = time.monotonic()

    def __call__(self, kid: bytes) -> KnownKey | None:
        found = self._ring(kid)
        if found is None and time.monotonic() - self._loaded >= self.reload_s:
            self._ring = trusted_ring(self.keys_dir)
            self._loaded = time.monotonic()
            found = self._ring(kid)
        return found
