"""Federated aggregation: exact streaming sums and Flower-like strategies, in plain numpy.

Nothing here imports torch, so services that only aggregate stay light. ``JobSpec``
is the one job schema and ``TrainConfig`` one round's device instructions.
"""

from qflare.fl.accumulate import FixedPoint, FixedPointAccumulator, weighted_average
from qflare.fl.arrays import NDArrays, flatten, unflatten
from qflare.fl.job import JobSpec, StrategyParams, TrainConfig
from qflare.fl.registry import STRATEGIES, build_strategy, register_strategy
from qflare.fl.strategies import FedAvg, FedProx, FedProxParams
from qflare.fl.strategy import Strategy, StrategyState, Update

__all__ = [
    "STRATEGIES",
    "FedAvg",
    "FedProx",
    "FedProxParams",
    "FixedPoint",
    "FixedPointAccumulator",
    "JobSpec",
    "NDArrays",
    "Strategy",
    "StrategyParams",
    "StrategyState",
    "TrainConfig",
    "Update",
    "build_strategy",
    "flatten",
    "register_strategy",
    "unflatten",
    "weighted_average",
]
