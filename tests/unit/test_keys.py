"""The device key cache follows the registry's records: active keys verify, others are named.

Only a newer revision changes it; a bare tombstone never does.
"""

from __future__ import annotations

import pytest

from qflare.crypto import generate_key
from qflare.errors import Rejected
from qflare.keys import AnyKey, DeviceKeys, refuse_tombstone
from qflare.protocol import KeyRing
from qflare.protocol.devices import Device
from qflare.reasons import Reason


def test_activate_revoke_rotate_delete() -> None:
    keys = DeviceKeys()
    k1, k2 = generate_key(), generate_key()
    keys.apply(Device("d", "active", k1.public_key, 1, 1, revision=1))
    found = keys(k1.key_id)
    assert found is not None and found.owner == "d" and len(keys) == 1
    keys.apply(Device("d", "active", k2.public_key, 1, 2, revision=2))  # rotation: the old key stops at once
    assert keys(k1.key_id) is None and keys(k2.key_id) is not None
    keys.apply(Device("d", "revoked", k2.public_key, 1, 3, revision=3))
    assert keys(k2.key_id) is None
    assert keys.retired_owner(k2.key_id) == "d"
    keys.apply(Device("d", "active", k2.public_key, 1, 4, revision=4))  # re-activated
    assert keys(k2.key_id) is not None and keys.retired_owner(k2.key_id) is None
    keys.apply(Device("d", "deleted", k2.public_key, 1, 5, revision=5))  # the signed deletion
    assert keys(k2.key_id) is None and keys.retired_owner(k2.key_id) == "d" and len(keys) == 0


def test_an_old_revision_never_re_enables_a_revoked_key() -> None:
    keys = DeviceKeys()
    key = generate_key()
    active = Device("d", "active", key.public_key, 1, 1, revision=1)
    keys.apply(active)
    keys.apply(Device("d", "revoked", key.public_key, 1, 2, revision=2))
    with pytest.raises(Rejected) as caught:
        keys.apply(active)  # the old signed record, re-published
    assert caught.value.reason == Reason.STALE_REVISION
    assert keys(key.key_id) is None and keys.retired_owner(key.key_id) == "d"
    keys.apply(Device("d", "revoked", key.public_key, 1, 2, revision=2))  # the same state re-sent: no-op
    assert keys(key.key_id) is None


def test_a_bare_tombstone_is_refused_with_its_reason() -> None:
    with pytest.raises(Rejected) as caught:
        refuse_tombstone(b"dev-1")
    assert caught.value.reason == Reason.TOMBSTONE and "dev-1" in str(caught.value)


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


def test_a_suspended_key_still_verifies_and_its_status_is_known() -> None:
    keys = DeviceKeys()
    key = generate_key()
    assert keys.status("d") is None
    keys.apply(Device("d", "active", key.public_key, 1, 1, revision=1))
    assert keys.status("d") == "active"
    keys.apply(Device("d", "suspended", key.public_key, 1, 2, revision=2))
    found = keys(key.key_id)  # heartbeats still verify; services refuse by status
    assert found is not None and found.owner == "d" and len(keys) == 1
    assert keys.status("d") == "suspended" and keys.retired_owner(key.key_id) is None
    keys.apply(Device("d", "active", key.public_key, 1, 3, revision=3))  # reinstated
    assert keys.status("d") == "active" and keys(key.key_id) is not None
    keys.apply(Device("d", "revoked", key.public_key, 1, 4, revision=4))
    assert keys.status("d") == "revoked" and keys(key.key_id) is None
    keys.apply(Device("d", "deleted", key.public_key, 1, 5, revision=5))
    assert keys.status("d") is None


def test_an_old_active_record_does_not_lift_a_suspension() -> None:
    keys = DeviceKeys()
    key = generate_key()
    active = Device("d", "active", key.public_key, 1, 1, revision=1)
    keys.apply(active)
    keys.apply(Device("d", "suspended", key.public_key, 1, 2, revision=2))
    with pytest.raises(Rejected) as caught:
        keys.apply(active)
    assert caught.value.reason == Reason.STALE_REVISION and keys.status("d") == "suspended"
