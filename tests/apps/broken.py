"""A device app whose module raises on import: its devices must still run and report why."""

from __future__ import annotations

raise RuntimeError("the app's data folder /nonexistent is missing")
