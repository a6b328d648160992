"""One module per aggregation algorithm; each registers itself with ``register_strategy``.

Every module of this package is imported here, so a new strategy needs no edit
outside its own module. docs/strategies.md lists them with their parameters.
"""

from __future__ import annotations

import importlib
import pkgutil

from qflare.fl.strategies.fedavg import FedAvg, FedAvgParams
from qflare.fl.strategies.fedprox import FedProx, FedProxParams

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FedAvg", "FedAvgParams", "FedProx", "FedProxParams"]
