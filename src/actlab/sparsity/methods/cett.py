"""CETT thresholds (Sparsing Law, Luo et al., 2024; ReLU^2 Wins, Zhang et al., 2024).

For the down projection's input ``h`` and neuron output norms ``n_i = |h_i| * ||W_down[:, i]||``,
``CETT(t) = E_tokens ||W_down h_{n<=t}|| / ||W_down h||`` is the relative size of what a threshold ``t``
removes. Per layer, the largest ``t`` with ``CETT(t) <= target`` (found by bisection on the calibration
sample); the per-neuron threshold on ``|h_i|`` is ``t / ||W_down[:, i]||``. The knob is the CETT target:
the sparsity is what it yields, layer by layer.

Example:
    >>> plan = actlab.sparsify_(model, CettConfig(cett=0.2), calib)   # doctest: +SKIP
"""

from __future__ import annotations

import torch

from actlab.models.adapters import linear_weight
from actlab.sparsity.config import CettConfig
from actlab.sparsity.groups import Group
from actlab.sparsity.methods.base import ThresholdMethod, column_norms, register_method


def cett_at(h: torch.Tensor, w_down: torch.Tensor, drop: torch.Tensor) -> float:
    """Mean over tokens of ``||W (h * drop)|| / ||W h||``: ``h`` [rows, d_ff], ``w_down`` [d, d_ff]."""
    full = (h @ w_down.T).norm(dim=-1)  # [rows]
    removed = ((h * drop) @ w_down.T).norm(dim=-1)  # [rows]
    return float((removed / full.clamp_min(1e-12)).mean())


def level_for_cett(h: torch.Tensor, w_down: torch.Tensor, scores: torch.Tensor, table, target: float,
                   iters: int = 16) -> float:
    """Largest sparsity level whose CETT stays within ``target`` (bisection; CETT grows with the level)."""
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        drop = (scores <= table.threshold(mid)).float()
        if cett_at(h, w_down, drop) <= target:
            lo = mid
        else:
            hi = mid
    return lo


@register_method
class Cett(ThresholdMethod):
    config_cls = CettConfig
    kinds = ("mlp.down_in",)

    def channel_weights(self, group: Group) -> torch.Tensor | None:
        return column_norms(self.model, group.consumers)

    def levels(self, knob: float) -> dict[str, float]:
        out = {}
        for g in self.groups:
            w_down = linear_weight(self.model.get_submodule(g.consumers[0])).detach().float().cpu()
            h = self.sample.rows[g.site]
            out[g.name] = 0.0 if knob <= 0 else level_for_cett(h, w_down, self._scores(g), self.tables[g.name], knob)
        return out
