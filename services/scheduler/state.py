"""The scheduler's faust tables, holding only rows it signed itself.

faust restores a table from its changelog topic on every start, and the
scheduler then signs round tasks built from what it restored. A row anyone
else wrote to that topic must not count: each value is a state record sealed
with the scheduler's key and bound to the table and the row's key
(``qflare.protocol.state``), and every read verifies it. A row that does not
verify reads as absent and is reported once (``state_invalid``); the next
legitimate write of that key replaces it.

Keys and values are raw bytes on the changelog, so a row of any shape is
loaded as bytes and judged here instead of failing faust's own decoding.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from faust.types import TableT

from qflare.crypto import Signer
from qflare.errors import ProtocolError, Rejected
from qflare.protocol.state import open_state, seal_state
from qflare.reasons import Reason


class SignedTable:
    """A ``str -> dict`` view of a faust table whose rows are signed state records."""

    def __init__(
        self,
        table: TableT[Any, Any],
        signer: Signer,
        *,
        check: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        # Serializers are read when the changelog topic is first built, after this.
        settable: Any = table  # the attributes exist on faust's Table, not on its TableT protocol
        settable.key_serializer = "raw"
        settable.value_serializer = "raw"
        # faust built the changelog topic (with json serializers) when the table was declared.
        settable.changelog_topic = settable._new_changelog_topic()
        self.table = table
        self.signer = signer
        #: Parses a value, raising a ``ProtocolError`` when its schema is wrong.
        self.check = check
        self.name = table.name
        #: Refusals not reported yet: (row key, error); the owner drains and audits them.
        self.invalid: list[tuple[str, Rejected]] = []
        self._reported: set[bytes] = set()
        #: key -> (row bytes, value) of the last row that verified: a row is checked once, not per read.
        self._verified: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.table.get(key.encode())
        return None if raw is None else self._open(key, raw)

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self.table[key.encode()] = seal_state(self.signer, table=self.name, key=key, value=value)

    def __delitem__(self, key: str) -> None:
        self.table.pop(key.encode(), None)
        self._verified.pop(key, None)

    def row_keys(self) -> list[str]:
        """Every row key, verified or not (for pruning, which reads no value)."""
        return [_text(k) for k in list(self.table.keys())]

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The rows that verify; the others are reported and skipped."""
        for raw_key, raw in list(self.table.items()):
            key = _text(raw_key)
            value = self._open(key, raw)
            if value is not None:
                yield key, value

    def verify_all(self) -> int:
        """Check every row (after recovery); returns how many were refused."""
        before = len(self._reported)
        for _ in self.items():
            pass
        return len(self._reported) - before

    def _open(self, key: str, raw: object) -> dict[str, Any] | None:
        try:
            if not isinstance(raw, bytes | bytearray | memoryview):
                raise Rejected(Reason.STATE_INVALID, "row is not a signed state record", field="state")
            known = self._verified.get(key)
            if known is not None and known[0] == raw:
                return copy.deepcopy(known[1])  # callers mutate what they read
            value = open_state(raw, self.signer.public_key, table=self.name, key=key)
            if self.check is not None:
                self.check(value)
            self._verified[key] = (bytes(raw), copy.deepcopy(value))
            return value
        except ProtocolError as exc:
            digest = hashlib.sha256(repr((key, raw)).encode()).digest()
            if digest not in self._reported:
                self._reported.add(digest)
                refusal = exc if isinstance(exc, Rejected) else None
                self.invalid.append(
                    (key, refusal or Rejected(Reason.STATE_INVALID, f"{exc.reason}: {exc}", field=exc.field))
                )
            return None


def _text(key: object) -> str:
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode(errors="replace")
    return str(key)
