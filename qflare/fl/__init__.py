"""Federated aggregation: exact streaming sums and Flower-like strategies, in plain numpy.

Nothing here imports torch, so services that only aggregate stay light.
"""

from qflare.fl.accumulate import FixedPoint, FixedPointAccumulator, weighted_average
from qflare.fl.arrays import NDArrays, flatten, unflatten
from qflare.fl.strategies import STRATEGIES, FedAvg, FedProx, build_strategy
from qflare.fl.strategy import Strategy, StrategyState, TrainConfig, Update

__all__ = [
    "STRATEGIES",
    "FedAvg",
    "FedProx",
    "FixedPoint",
    "FixedPointAccumulator",
    "NDArrays",
    "Strategy",
    "StrategyState",
    "TrainConfig",
    "Update",
    "build_strategy",
    "flatten",
    "unflatten",
    "weighted_average",
]
