"""CHESS: channel-wise thresholds in the MLP, selective thresholds in attention (Zhang et al., 2024).

MLP: neuron ``i``'s importance is ``|act(gate)_i| * RMS(up_i)``, i.e. a per-neuron threshold
``T / RMS(up_i)`` on ``|act(gate)_i|`` with one ``T`` per layer (up and down skipped for masked neurons).
Attention: only the q input and the o input are sparsified (k and v stay dense: the KV cache keeps them).
``attn_ratio`` sets the attention sparsity relative to the MLP's; both rise together to reach the target.

Example:
    >>> plan = actlab.sparsify_(model, ChessConfig(0.4), calib)   # doctest: +SKIP
"""

from __future__ import annotations

import torch

from actlab.sparsity.collect import CalibrationSample
from actlab.sparsity.config import ChessConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.groups import Group, act_groups, layer_groups
from actlab.sparsity.methods.base import ThresholdMethod, register_method


@register_method
class Chess(ThresholdMethod):
    config_cls = ChessConfig

    def make_groups(self, split: bool) -> list[Group]:
        attn = []
        for g in layer_groups(self.model, ("attn.qkv_in", "attn.o_in")):
            if g.site.endswith("qkv_in"):
                q = (g.consumers[0],)  # the adapter lists q first
                g = Group(g.site, g.layer, "input", q, q, g.width)
            attn.append(g)
        return attn + act_groups(self.model)

    def collect(self, windows: torch.Tensor, up_moments: bool = True) -> CalibrationSample:
        return super().collect(windows, up_moments=True)

    def channel_weights(self, group: Group) -> torch.Tensor | None:
        if group.kind != "act":
            return None
        return (self.sample.up_sq_sum[group.layer] / self.sample.tokens).sqrt()

    def levels(self, knob: float) -> dict[str, float]:
        ratio = self.config.attn_ratio
        mlp = sum(p for n, p in self.params.items() if n.endswith("act_out"))
        attn = sum(self.params.values()) - mlp
        level = knob * sum(self.sizes.values()) / (mlp + ratio * attn)
        if level >= 1.0 or ratio * level >= 1.0:
            raise PlanError(f"chess cannot reach {knob:.0%} model-wide with attn_ratio={ratio}; ask for less")
        return {g.name: level * (1.0 if g.kind == "act" else ratio) for g in self.groups}
