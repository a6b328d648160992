"""Whole-round tests need the local stack, like the integration tests."""

from tests.integration.conftest import _stack_is_up, pytest_collection_modifyitems

__all__ = ["_stack_is_up", "pytest_collection_modifyitems"]
