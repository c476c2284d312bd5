"""Top-k (Lazy Neuron phenomenon, Li et al., 2023): keep the ``k`` largest ``|x_i|`` of every token.

No calibration: ``k = round((1 - s) * in)`` at every input of q/k/v, o, gate/up and down. The mask is chosen
per token, so there is no threshold for a kernel to read: the plan runs on the masking path only.

Example:
    >>> plan = actlab.sparsify_(model, TopKConfig(0.5), None)   # doctest: +SKIP
"""

from __future__ import annotations

import torch

from actlab.sparsity.config import TopKConfig
from actlab.sparsity.groups import layer_groups
from actlab.sparsity.methods.base import Method, register_method
from actlab.sparsity.plan import PlanEntry


@register_method
class TopK(Method):
    config_cls = TopKConfig

    def entries(self, knob: float) -> list[PlanEntry]:
        out = []
        for g in layer_groups(self.model):
            k = max(1, round((1.0 - knob) * g.width))
            t = torch.tensor(float(k))
            out.append(PlanEntry(g.site, g.layer, "topk", g.consumers, g.modules, t, 1.0 - k / g.width))
        return out
