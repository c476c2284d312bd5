"""The dense fine-tuning baseline: LM loss only (the base handler's behaviour, registered under ``dense``)."""

from actlab.train.config import DenseConfig
from actlab.train.objective import Objective, register_objective


@register_objective(DenseConfig)
class DenseObjective(Objective):
    """Next-token loss; LoRA or full fine-tuning as the config says."""
