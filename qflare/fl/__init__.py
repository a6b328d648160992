"""Federated aggregation: exact streaming sums and Flower-like strategies, in plain numpy.

Nothing here imports torch, so services that only aggregate stay light. ``JobSpec``
is the one job schema and ``TrainConfig`` one round's device instructions.
"""

from qflare.fl.accumulate import FixedPoint, FixedPointAccumulator, weighted_average
from qflare.fl.arrays import NDArrays, flatten, unflatten
from qflare.fl.job import JobSpec, StrategyParams, TrainConfig
from qflare.fl.registry import STRATEGIES, build_strategy, register_strategy
from qflare.fl.spec import CONTROL, WEIGHTS, GroupSpec, MetricSpec, UpdateSpec
from qflare.fl.state import RoundSums, StrategyState
from qflare.fl.strategies import FedAvg, FedProx, FedProxParams
from qflare.fl.strategy import RoundInput, Strategy, Update

__all__ = [
    "CONTROL",
    "STRATEGIES",
    "WEIGHTS",
    "FedAvg",
    "FedProx",
    "FedProxParams",
    "FixedPoint",
    "FixedPointAccumulator",
    "GroupSpec",
    "JobSpec",
    "MetricSpec",
    "NDArrays",
    "RoundInput",
    "RoundSums",
    "Strategy",
    "StrategyParams",
    "StrategyState",
    "TrainConfig",
    "Update",
    "UpdateSpec",
    "build_strategy",
    "flatten",
    "register_strategy",
    "unflatten",
    "weighted_average",
]
