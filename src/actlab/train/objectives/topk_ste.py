"""``topk-ste``: Q-Sparse's per-token top-k at linear inputs, straight-through gradient, as a ``topk`` plan.

No new hooks: the top-k plan of ``actlab.sparsity`` (``TopKConfig``) is applied with the masks'
straight-through switch on, which is ``mask-lora`` with a plan built here instead of loaded. At the end
the plan (restricted to ``sites``) is written to ``out/plan``, fingerprinted for the merged model.

Example:
    >>> from actlab.train import TopKSteConfig
    >>> handler_for(TopKSteConfig(sparsity=0.5)).__class__.__name__           # doctest: +SKIP
    'TopKSteObjective'
"""

from __future__ import annotations

import dataclasses

from torch import nn

from actlab.models.wrappers import unwrap
from actlab.sparsity.calibrate import calibrate
from actlab.sparsity.config import TopKConfig
from actlab.sparsity.groups import INPUT_KINDS
from actlab.sparsity.metrics import entry_metrics
from actlab.sparsity.plan import SparsityPlan
from actlab.train.errors import TrainError
from actlab.train.objective import register_objective
from actlab.train.objectives.mask_lora import MaskLoraObjective
from actlab.train.objectives.topk_ste_config import TopKSteConfig


@register_objective(TopKSteConfig)
class TopKSteObjective(MaskLoraObjective):
    """LM loss under per-token top-k masks with straight-through gradients; writes the top-k plan."""

    config: TopKSteConfig

    @property
    def straight_through(self) -> bool:
        return True

    def make_plan(self, model: nn.Module) -> SparsityPlan:
        inner = unwrap(model)[0]
        plan = calibrate(inner, TopKConfig(self.config.sparsity), None)
        kinds = set(self.config.sites or INPUT_KINDS)
        entries = [e for e in plan.entries if e.site.split(".", 2)[2] in kinds]
        if not entries:
            have = sorted({e.site.split(".", 2)[2] for e in plan.entries})
            raise TrainError(f"topk-ste: the model has no input sites of kind {sorted(kinds)}; "
                             f"its input kinds: {', '.join(have)}")
        extra = {**plan.extra, "sites": sorted(kinds & {e.site.split(".", 2)[2] for e in plan.entries})}
        return dataclasses.replace(plan, entries=entries, metrics=entry_metrics(inner, entries), extra=extra)
