"""WINA: weight-informed thresholds, ``|x_i| * ||W[:, i]||_2 > t`` (Chen et al., 2025).

A channel whose weight column is small does little to the output even when ``|x_i|`` is large, and the other
way round. For an input shared by several linears (q/k/v, gate/up) the norm runs over the rows of all of
them, so one per-channel threshold ``t / ||W[:, i]||`` serves the whole group.

Example:
    >>> plan = actlab.sparsify_(model, WinaConfig(0.4), calib)   # doctest: +SKIP
"""

from __future__ import annotations

import torch

from actlab.sparsity.config import WinaConfig
from actlab.sparsity.groups import Group
from actlab.sparsity.methods.base import ThresholdMethod, column_norms, register_method


@register_method
class Wina(ThresholdMethod):
    """``w_i = ||W[:, i]||`` over the group's consumers."""

    config_cls = WinaConfig

    def channel_weights(self, group: Group) -> torch.Tensor | None:
        return column_norms(self.model, group.consumers, self.rotations.get(group.site))
