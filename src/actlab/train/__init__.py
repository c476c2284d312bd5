"""Induce activation sparsity by training: objectives as configs, one loop, checkpoints that resume.

Example:
    >>> from actlab.train import DenseConfig
    >>> DenseConfig(adapter="full").to_dict()["objective"]
    'dense'
"""

from actlab.train.config import CONFIGS, DenseConfig, TrainConfig, config_from_dict, register_config
from actlab.train.errors import TrainError
from actlab.train.objective import Objective, handler_for, register_objective

__all__ = [
    "CONFIGS",
    "DenseConfig",
    "Objective",
    "TrainConfig",
    "TrainError",
    "config_from_dict",
    "handler_for",
    "register_config",
    "register_objective",
]
