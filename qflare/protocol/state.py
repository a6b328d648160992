"""Signed state rows: what a service keeps in a Kafka-backed table and reads back on recovery.

The scheduler's tables are restored from changelog topics. Anyone who can
write to such a topic could otherwise hand the scheduler a job state of their
own, from which it would sign round tasks. Each row is therefore a record the
service signed itself, bound to the table and the row's key, so a row copied
under another key, forged, or altered is refused when it is read back.

A row is a msgpack map (shortest forms, keys in this order)::

    {"v": 1, "table": str, "key": str, "key_id": bin16, "value": map, "sig": bin}

``sig`` is the signer's signature over ``STATE_DOMAIN`` followed by the packed
map of every field but ``sig``. The domain prefix keeps a state signature from
ever verifying as a message envelope, and the reverse.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from qflare.crypto.backends import signature_backend
from qflare.crypto.base import Signer, key_id
from qflare.errors import SchemaError, SignatureError
from qflare.protocol import wire
from qflare.protocol.limits import DEFAULT_LIMITS, Limits

STATE_VERSION = 1
STATE_DOMAIN = b"qflare-state-v1\x00"
_KEYS = ("v", "table", "key", "key_id", "value", "sig")


def _fields(table: str, key: str, kid: bytes, value: Mapping[str, Any]) -> dict[str, object]:
    return {"v": STATE_VERSION, "table": table, "key": key, "key_id": kid, "value": value}


def seal_state(signer: Signer, *, table: str, key: str, value: Mapping[str, Any]) -> bytes:
    """One table row: ``value`` signed with ``signer`` and bound to ``table`` and ``key``."""
    fields = _fields(table, key, signer.key_id, value)
    sig = signer.sign(STATE_DOMAIN + wire.pack(fields))
    return wire.pack({**fields, "sig": sig})


def open_state(
    raw: bytes | bytearray | memoryview,
    public_key: bytes,
    *,
    table: str,
    key: str,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """The value of a row sealed by ``public_key``'s owner for (``table``, ``key``), or a typed error."""
    wl = wire.WireLimits(
        max_bytes=limits.max_message_bytes,
        max_depth=limits.max_depth,
        max_array_len=limits.max_array_len,
        max_map_len=limits.max_map_len,
        max_str_len=limits.max_str_len,
        max_bin_len=limits.max_str_len,
    )
    doc = wire.unpack(raw, wl, root="state")
    if not isinstance(doc, dict):
        raise SchemaError("a state row is a map", field="state")
    wire.check_keys(doc, _KEYS, "state")
    value, sig, kid = doc["value"], doc["sig"], doc["key_id"]
    if doc["v"] != STATE_VERSION:
        raise SchemaError(f"unsupported state version {doc['v']!r}", field="state.v")
    if not isinstance(value, dict) or not isinstance(sig, memoryview) or not isinstance(kid, memoryview):
        raise SchemaError("value must be a map, key_id and sig binary", field="state")
    if doc["table"] != table or doc["key"] != key:
        raise SchemaError(f"row was sealed for {doc['table']!r}/{doc['key']!r}", field="state.key")
    if not hmac.compare_digest(bytes(kid), key_id(public_key)):
        raise SignatureError("row was sealed with another key", field="state.key_id")
    signed = STATE_DOMAIN + wire.pack(_fields(table, key, bytes(kid), value))
    if not signature_backend().verify(public_key, signed, bytes(sig)):
        raise SignatureError("state row signature does not verify", field="state.sig")
    return value
