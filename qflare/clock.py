"""The wall clock, in the unit every message and record uses."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, from integer nanoseconds (no float rounding)."""
    return time.time_ns() // 1_000_000
