"""``TopKSteConfig``: Q-Sparse's top-k on linear inputs with a straight-through gradient, objective ``topk-ste``.

Example:
    >>> from actlab.train.config import config_from_dict
    >>> cfg = TopKSteConfig(sparsity=0.6, sites=("mlp.down_in",))
    >>> config_from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from actlab.train.config import TrainConfig, register_config
from actlab.train.errors import TrainError


@register_config
@dataclass(frozen=True)
class TopKSteConfig(TrainConfig):
    """Keep the ``k = (1 - sparsity) * dim`` largest ``|x_i|`` of each token at the chosen linear inputs.

    The forward is the ``topk`` plan kind of ``actlab.sparsity`` (``TopKConfig``); the gradient passes
    the dropped channels straight through (Q-Sparse). The output model comes with the top-k plan, so
    ``actlab eval --plan out/plan`` measures it at the sparsity it was trained for.

    Attributes:
        sparsity: fraction of each input's channels dropped per token, in [0, 1).
        sites: input site kinds (``attn.qkv_in``, ``attn.o_in``, ``mlp.gate_up_in``, ``mlp.in``,
            ``mlp.down_in``); empty = all of them (q/k/v, o, gate/up and down, as Q-Sparse).
    """

    objective: ClassVar[str] = "topk-ste"

    sparsity: float = 0.5
    sites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        from actlab.sparsity.groups import INPUT_KINDS

        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not math.isfinite(self.sparsity) or not 0.0 <= self.sparsity < 1.0:
            raise TrainError(f"topk-ste: sparsity must be a number in [0, 1), got {self.sparsity!r}")
        if isinstance(self.sites, str):
            object.__setattr__(self, "sites", (self.sites,))
        unknown = [k for k in self.sites if k not in INPUT_KINDS]
        if unknown:
            raise TrainError(f"topk-ste: unknown site kind(s) {unknown}; choose from {', '.join(INPUT_KINDS)} "
                             "(empty = all)")
