"""The no-Docker development stack: Kafka, PostgreSQL, Redis and Elasticsearch on loopback."""

from qflare.stack.launcher import ServerStatus, down, status, up
from qflare.stack.settings import StackSettings

__all__ = ["ServerStatus", "StackSettings", "down", "status", "up"]
