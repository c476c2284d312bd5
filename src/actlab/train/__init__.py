"""Induce activation sparsity by training: objectives as configs, one loop, checkpoints that resume.

Example:
    >>> from actlab.train import DenseConfig
    >>> DenseConfig(adapter="full").to_dict()["objective"]
    'dense'
"""

from actlab.train.config import CONFIGS, DenseConfig, TrainConfig, config_from_dict, register_config
from actlab.train.errors import TrainError
from actlab.train.objective import Objective, handler_for, register_objective
from actlab.train.objectives.deft_config import DeftConfig
from actlab.train.objectives.mask_lora_config import MaskLoraConfig
from actlab.train.objectives.relufy_config import RelufyConfig
from actlab.train.objectives.topk_ste_config import TopKSteConfig

__all__ = [
    "CONFIGS",
    "DeftConfig",
    "DenseConfig",
    "MaskLoraConfig",
    "Objective",
    "RelufyConfig",
    "TopKSteConfig",
    "TrainConfig",
    "TrainError",
    "config_from_dict",
    "handler_for",
    "register_config",
    "register_objective",
]


# ``actlab.train`` is both this package and the verb ``actlab.train(model, config, data)``: importing any
# submodule makes the package the ``actlab.train`` attribute, so the package itself is callable.
def __getattr__(name: str):
    if name in ("train", "TrainArgs", "TrainResult"):  # lazily: the loop imports the objectives' handlers
        from actlab.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'actlab.train' has no attribute {name!r}")


def _install_call() -> None:
    import sys
    import types

    class _Package(types.ModuleType):
        def __call__(self, *args, **kwargs):
            from actlab.train.loop import train

            return train(*args, **kwargs)

    sys.modules[__name__].__class__ = _Package


_install_call()
