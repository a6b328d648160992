"""QFLARE: federated learning over Kafka with post-quantum signatures."""

from qflare.errors import QflareError

__version__ = "0.1.0"
__all__ = ["QflareError", "__version__"]
