"""Device public keys, as the registry publishes them on the compacted device topic.

No service asks the registry for a key: each replays the device topic from the
start on every start-up and follows it (the registry itself fills the same
cache from its database). Only ``active`` and ``suspended`` records verify: a
suspended device still heartbeats, and it is each service that refuses what a
suspended device may not do (``status``). A key that belonged to a revoked,
deregistered or deleted device is remembered, so a rejection can say ``revoked``
instead of ``unknown_key``.

Two rules hold for every reader of the device topic, whatever it keeps:

- a bare tombstone (null value) changes nothing: it carries no signature, so
  anyone who can write the topic could send one. Only a signed record with
  status ``deleted`` removes a device (``refuse_tombstone``);
- a record applies only if its revision is above the highest already applied
  for that device (``Revisions``), so a re-published old record, read after the
  newer ones or alone after compaction, cannot undo a revocation. An equal
  revision is the same state re-sent and changes nothing.
"""

from __future__ import annotations

from typing import NoReturn

from qflare.crypto.base import ML_DSA_65, key_id
from qflare.errors import Rejected
from qflare.protocol import KeyRing
from qflare.protocol.decoder import KeyLookup, KnownKey
from qflare.protocol.devices import Device
from qflare.reasons import Reason

#: Statuses whose key verifies. A suspended device is quarantined, not retired: its
#: heartbeats are still accepted, and an operator may reinstate it.
VERIFYING_STATUSES = frozenset({"active", "suspended"})


def refuse_tombstone(key: bytes | None) -> NoReturn:
    """A null-value record on a state topic: refused, and the state it names is kept."""
    subject = key.decode(errors="replace")[:256] if key else "?"
    raise Rejected(
        Reason.TOMBSTONE,
        f"unsigned tombstone for {subject!r} ignored: only a signed deletion removes state",
        field="$",
    )


def newer(device: Device, seen: int) -> bool:
    """True if ``device`` is above revision ``seen``; False if it is the same revision (the
    registry re-sends a state unchanged, e.g. a repeated revoke); ``Rejected(STALE_REVISION)``
    if it is older: a replayed signed record must not roll a device back."""
    if device.revision < seen:
        raise Rejected(
            Reason.STALE_REVISION,
            f"device {device.device_id} revision {device.revision} is not above {seen}",
            field="body.revision",
        )
    return device.revision > seen


class Revisions:
    """The highest revision applied per device id."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def admit(self, device: Device) -> bool:
        """``newer`` than what was applied for the device; recorded if so."""
        if not newer(device, self._seen.get(device.device_id, 0)):
            return False
        self._seen[device.device_id] = device.revision
        return True


class DeviceKeys:
    """A ``KeyLookup`` (``keys(key_id)``) over the latest record of each device."""

    def __init__(self) -> None:
        self._ring = KeyRing()
        #: device id -> key id of its latest record, whatever its status.
        self._current: dict[str, bytes] = {}
        #: device id -> status of its latest record (deleted devices are forgotten).
        self._status: dict[str, str] = {}
        #: key id -> device id, for keys of retired devices.
        self._retired: dict[bytes, str] = {}
        self.revisions = Revisions()

    def __call__(self, kid: bytes) -> KnownKey | None:
        return self._ring(kid)

    def __len__(self) -> int:
        return len(self._ring)

    def apply(self, device: Device) -> None:
        """The registry's record of a device (from the topic); ``Rejected`` if it is not newer."""
        if self.revisions.admit(device):
            self.set(device.device_id, device.status, device.public_key, device.sig_alg)

    def set(self, device_id: str, status: str, public_key: bytes, sig_alg: str = ML_DSA_65) -> None:
        """A device's current key and status, wherever they were read."""
        kid = key_id(public_key)
        previous = self._current.get(device_id)
        if previous is not None and previous != kid:
            # A rotated key stops verifying the moment the new record is read.
            self._ring.remove(previous)
        self._current[device_id] = kid
        if status == "deleted":
            self._status.pop(device_id, None)
        else:
            self._status[device_id] = status
        if status in VERIFYING_STATUSES:
            self._ring.add(device_id, public_key, sig_alg)
            self._retired.pop(kid, None)
        else:
            self._ring.remove(kid)
            self._retired[kid] = device_id

    def retired_owner(self, kid: bytes) -> str | None:
        return self._retired.get(kid)

    def status(self, device_id: str) -> str | None:
        """The status of the device's latest record (``active``, ``suspended``, ``revoked``,
        ``deregistered``); None for a device never seen or deleted."""
        return self._status.get(device_id)


class AnyKey:
    """Device keys first, then trusted keys: for topics that both devices and services sign."""

    def __init__(self, trusted: KeyLookup, devices: DeviceKeys) -> None:
        self.trusted, self.devices = trusted, devices

    def __call__(self, kid: bytes) -> KnownKey | None:
        return self.devices(kid) or self.trusted(kid)
