"""The device key cache follows the registry's records: active keys verify, others are named."""

from __future__ import annotations

from qflare.crypto import generate_key
from qflare.keys import AnyKey, DeviceKeys
from qflare.protocol import KeyRing
from qflare.protocol.devices import Device


def test_activate_revoke_rotate_forget() -> None:
    keys = DeviceKeys()
    k1, k2 = generate_key(), generate_key()
    keys.apply(Device("d", "active", k1.public_key, 1, 1))
    found = keys(k1.key_id)
    assert found is not None and found.owner == "d" and len(keys) == 1
    keys.apply(Device("d", "active", k2.public_key, 1, 2))  # rotation: the old key stops at once
    assert keys(k1.key_id) is None and keys(k2.key_id) is not None
    keys.apply(Device("d", "revoked", k2.public_key, 1, 3))
    assert keys(k2.key_id) is None
    assert keys.retired_owner(k2.key_id) == "d"
    keys.apply(Device("d", "active", k2.public_key, 1, 4))  # re-activated
    assert keys(k2.key_id) is not None and keys.retired_owner(k2.key_id) is None
    keys.forget("d")
    assert keys(k2.key_id) is None and keys.retired_owner(k2.key_id) == "d" and len(keys) == 0


def test_any_key_asks_device_keys_then_trusted_keys() -> None:
    devices, trusted = DeviceKeys(), KeyRing()
    device, service = generate_key(), generate_key()
    devices.set("d", "active", device.public_key)  # as the registry fills it from its database
    trusted.add("registry", service.public_key)
    lookup = AnyKey(trusted, devices)
    found = lookup(device.key_id)
    assert found is not None and found.owner == "d"
    found = lookup(service.key_id)
    assert found is not None and found.owner == "registry"
    devices.set("d", "revoked", device.public_key)
    assert lookup(device.key_id) is None and devices.retired_owner(device.key_id) == "d"
