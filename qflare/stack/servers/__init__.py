"""The five servers of the local stack, in start order."""

from qflare.stack.base import Server
from qflare.stack.servers.elasticsearch import Elasticsearch
from qflare.stack.servers.jaeger import Jaeger
from qflare.stack.servers.kafka import Kafka
from qflare.stack.servers.postgres import Postgres
from qflare.stack.servers.redis import Redis
from qflare.stack.settings import StackSettings

__all__ = ["Elasticsearch", "Jaeger", "Kafka", "Postgres", "Redis", "all_servers"]


def all_servers(cfg: StackSettings) -> list[Server]:
    return [Kafka(cfg), Postgres(cfg), Redis(cfg), Elasticsearch(cfg), Jaeger(cfg)]
