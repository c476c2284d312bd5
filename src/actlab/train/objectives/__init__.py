"""Built-in objective handlers; importing this package registers them (see ``objective.register_objective``)."""

from actlab.train.objectives import deft, dense, mask_lora, relufy, topk_ste  # noqa: F401
