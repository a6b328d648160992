"""Who may sign what: trusted service and operator keys, and device keys from the device topic."""

from __future__ import annotations

from qflare.identity import TrustedKeys
from qflare.protocol import KeyRing
from qflare.protocol.decoder import KnownKey
from qflare.protocol.devices import Device


class DeviceKeys:
    """A ``KeyLookup`` over the latest record of each device; only ``active`` keys verify."""

    def __init__(self) -> None:
        self._ring = KeyRing()
        self._current: dict[str, bytes] = {}

    def __call__(self, kid: bytes) -> KnownKey | None:
        return self._ring(kid)

    def __len__(self) -> int:
        return len(self._ring)

    def apply(self, device: Device) -> None:
        previous = self._current.get(device.device_id)
        if previous is not None and previous != device.key_id:
            self._ring.remove(previous)
        self._current[device.device_id] = device.key_id
        if device.status == "active":
            self._ring.add(device.device_id, device.public_key, device.sig_alg)
        else:
            self._ring.remove(device.key_id)

    def forget(self, device_id: str) -> None:
        kid = self._current.pop(device_id, None)
        if kid is not None:
            self._ring.remove(kid)


class AnyKey:
    """Trusted keys first, then device keys: for topics that both services and devices sign."""

    def __init__(self, trusted: TrustedKeys, devices: DeviceKeys) -> None:
        self.trusted, self.devices = trusted, devices

    def __call__(self, kid: bytes) -> KnownKey | None:
        return self.devices(kid) or self.trusted(kid)
