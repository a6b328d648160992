"""``qflare sim``: a job's rounds in one process, no Kafka, many devices trained at once.

The same strategy code (``qflare.fl``), device selection, data split, seeds and
local SGD as the services and their simulated fleet, so the same job gives the
same global model; only the transport is gone.
"""

from qflare.sim.engine import CentralEvaluation, RoundRecord, Simulation
from qflare.sim.fleet import SimFleet, device_ids, make_fleet, round_seed
from qflare.sim.trainers import BatchedTrainer, DeviceResult, ReferenceTrainer, Trainer

__all__ = [
    "BatchedTrainer",
    "CentralEvaluation",
    "DeviceResult",
    "ReferenceTrainer",
    "RoundRecord",
    "SimFleet",
    "Simulation",
    "Trainer",
    "device_ids",
    "make_fleet",
    "round_seed",
]
