"""Aliases shared across the library, so each is spelled once."""

from __future__ import annotations

#: A value that fits the protocol's scalar maps (job configs, round configs, audit details).
Scalar = str | int | float | bool | None

__all__ = ["Scalar"]
