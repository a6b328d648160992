"""Device public keys, as the registry publishes them on the compacted device topic.

No service asks the registry for a key: each replays the device topic from the
start on every start-up and follows it (the registry itself fills the same
cache from its database). Only ``active`` records verify. A key that belonged to
a revoked or deregistered device is remembered, so a rejection can say
``revoked`` instead of ``unknown_key``.
"""

from __future__ import annotations

from qflare.crypto.base import ML_DSA_65, key_id
from qflare.protocol import KeyRing
from qflare.protocol.decoder import KeyLookup, KnownKey
from qflare.protocol.devices import Device


class DeviceKeys:
    """A ``KeyLookup`` (``keys(key_id)``) over the latest record of each device."""

    def __init__(self) -> None:
        self._ring = KeyRing()
        #: device id -> key id of its latest record, whatever its status.
        self._current: dict[str, bytes] = {}
        #: key id -> device id, for keys of retired devices.
        self._retired: dict[bytes, str] = {}

    def __call__(self, kid: bytes) -> KnownKey | None:
        return self._ring(kid)

    def __len__(self) -> int:
        return len(self._ring)

    def apply(self, device: Device) -> None:
        """The registry's record of a device (from the topic)."""
        self.set(device.device_id, device.status, device.public_key, device.sig_alg)

    def set(self, device_id: str, status: str, public_key: bytes, sig_alg: str = ML_DSA_65) -> None:
        """A device's current key and status, wherever they were read."""
        kid = key_id(public_key)
        previous = self._current.get(device_id)
        if previous is not None and previous != kid:
            # A rotated key stops verifying the moment the new record is read.
            self._ring.remove(previous)
        self._current[device_id] = kid
        if status == "active":
            self._ring.add(device_id, public_key, sig_alg)
            self._retired.pop(kid, None)
        else:
            self._ring.remove(kid)
            self._retired[kid] = device_id

    def forget(self, device_id: str) -> None:
        """A tombstone (null record) for the device: it no longer exists."""
        kid = self._current.pop(device_id, None)
        if kid is not None:
            self._ring.remove(kid)
            self._retired[kid] = device_id

    def retired_owner(self, kid: bytes) -> str | None:
        return self._retired.get(kid)


class AnyKey:
    """Device keys first, then trusted keys: for topics that both devices and services sign."""

    def __init__(self, trusted: KeyLookup, devices: DeviceKeys) -> None:
        self.trusted, self.devices = trusted, devices

    def __call__(self, kid: bytes) -> KnownKey | None:
        return self.devices(kid) or self.trusted(kid)
