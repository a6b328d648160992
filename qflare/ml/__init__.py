"""Models, data and local training for the FedAvg-paper experiments.

Only the torch-free parts are re-exported here, so importing ``qflare.ml`` stays
cheap for services that only need datasets, partitions or model layouts. Torch
users import ``qflare.ml.models`` (modules, weights as numpy) and
``qflare.ml.train`` (``train_local``, ``evaluate``) directly.
"""

from qflare.ml.arch import MODEL_NAMES, ModelName, init_weights, layout, num_params, tensor_names
from qflare.ml.data import DATASET_NAMES, Dataset, DatasetName, load_dataset, read_idx, to_float
from qflare.ml.partition import dirichlet, iid, label_counts, pathological

__all__ = [
    "DATASET_NAMES",
    "MODEL_NAMES",
    "Dataset",
    "DatasetName",
    "ModelName",
    "dirichlet",
    "iid",
    "init_weights",
    "label_counts",
    "layout",
    "load_dataset",
    "num_params",
    "pathological",
    "read_idx",
    "tensor_names",
    "to_float",
]
