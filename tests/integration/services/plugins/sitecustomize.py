"""Imported by Python at start-up when this folder is on ``PYTHONPATH``: registers the test-only strategy."""

import tests.integration.services.median_strategy  # noqa: F401
