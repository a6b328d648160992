"""The no-Docker development stack: Kafka, PostgreSQL, Redis and Elasticsearch on loopback."""

from devstack.launcher import ServerStatus, down, status, up
from devstack.settings import StackSettings

__all__ = ["ServerStatus", "StackSettings", "down", "status", "up"]
