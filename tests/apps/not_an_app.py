"""A module whose ``app`` is not a DeviceApp, and that has no ``missing`` attribute."""

from __future__ import annotations

app = {"train": "not a handler"}
