"""Service and operator identities: their own key, and the public keys they trust.

Every message on every topic is signed. Each principal keeps its private key in
a directory of its own, ``<keys_root>/<name>/<name>.key`` (directory 0700, file
0600), so a volume or mount can hand a service its own key and no other. The
public halves are shared in ``<keys_root>/trusted/<name>.pub``; a service builds
the key ring for control-plane messages (device records, operator commands)
from that directory, and never reads another principal's private key. Device
keys come only from the compacted device topic.

A missing key is an error, not a reason to make a new one: a regenerated key
would silently split the deployment (the others still trust the old public key).
Keys are created explicitly, by ``qflare keys init`` or by a development
harness (the demo, the test fixtures) that says so in its log.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from qflare.crypto import KeyFile, Signer, generate_key, read_key, write_key
from qflare.errors import KeyFileError
from qflare.protocol import KeyRing
from qflare.protocol.decoder import KnownKey

DEFAULT_KEYS_DIR = Path(".qflare/keys")
#: The principals of a deployment: each gets a key directory from ``qflare keys init``.
PRINCIPALS = ("operator", "registry", "scheduler", "aggregator", "audit")

log = structlog.get_logger("qflare.identity")


@dataclass(frozen=True)
class Identity:
    name: str
    key: KeyFile
    signer: Signer


def key_path(name: str, keys_dir: Path = DEFAULT_KEYS_DIR) -> Path:
    """Where ``name``'s private key lives: ``<keys_dir>/<name>/<name>.key``."""
    if not name or "/" in name or name.startswith(".") or name == "trusted":
        raise KeyFileError(f"{name!r} cannot name a key directory", field="name")
    return keys_dir / name / f"{name}.key"


def load_identity(name: str, keys_dir: Path = DEFAULT_KEYS_DIR, *, create: bool = False) -> Identity:
    """Read ``name``'s key; with ``create`` (development harnesses only) make it when absent."""
    path = key_path(name, keys_dir)
    if not path.exists():
        if not create:
            raise KeyFileError(
                f"{path} does not exist; create it with `qflare keys init --keys-dir {keys_dir} {name}` "
                f"(or point QFLARE_KEYS_DIR at the directory that holds {name}/{name}.key)",
                field="path",
            )
        create_identity(name, keys_dir)
    key = read_key(path)
    trusted = keys_dir / "trusted" / f"{name}.pub"
    if not trusted.exists():
        publish_trusted(name, key, keys_dir)
    return Identity(name, key, key.signer())


def create_identity(name: str, keys_dir: Path = DEFAULT_KEYS_DIR) -> Path:
    """Write a new key for ``name`` (refusing to replace one) and publish its public half."""
    path = key_path(name, keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.parent.chmod(0o700)  # mkdir's mode is masked by the umask
    key = generate_key()
    write_key(path, key)
    publish_trusted(name, key, keys_dir)
    log.warning("created a new key", identity=name, path=str(path), key_id=key.key_id.hex())
    return path


def init_identities(keys_dir: Path, names: Iterable[str] = PRINCIPALS) -> list[Path]:
    """Create the keys of ``names`` that do not exist yet; returns the new key files."""
    return [create_identity(n, keys_dir) for n in names if not key_path(n, keys_dir).exists()]


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
