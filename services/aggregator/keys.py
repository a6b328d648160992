"""Device public keys, as the registry publishes them on the compacted device topic.

The aggregator never asks the registry: it replays the topic from the start on
every start-up and follows it. Only ``active`` records verify; a key that
belonged to a revoked or deregistered device is remembered so the rejection
can say ``revoked`` instead of ``unknown_key``.
"""

from __future__ import annotations

from qflare.protocol import KeyRing
from qflare.protocol.decoder import KnownKey
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
        previous = self._current.get(device.device_id)
        if previous is not None and previous != device.key_id:
            # A rotated key stops verifying the moment the new record is read.
            self._ring.remove(previous)
        self._current[device.device_id] = device.key_id
        if device.status == "active":
            self._ring.add(device.device_id, device.public_key, device.sig_alg)
            self._retired.pop(device.key_id, None)
        else:
            self._ring.remove(device.key_id)
            self._retired[device.key_id] = device.device_id

    def forget(self, device_id: str) -> None:
        """A tombstone (null record) for the device: it no longer exists."""
        kid = self._current.pop(device_id, None)
        if kid is not None:
            self._ring.remove(kid)
            self._retired[kid] = device_id

    def retired_owner(self, kid: bytes) -> str | None:
        return self._retired.get(kid)
