"""CATS: one threshold per layer on the gated MLP's activation ``|act(gate(x))|`` (Lee et al., 2024).

A neuron whose activation is masked needs neither its up row nor its down column; the gate is computed
densely. The kernel form is ``SparseGatedMLP(gate, up, down, act, gate_threshold)``.

Example:
    >>> plan = actlab.sparsify_(model, CatsConfig(0.25), calib)   # doctest: +SKIP
"""

from __future__ import annotations

from actlab.sparsity.config import CatsConfig
from actlab.sparsity.groups import Group, act_groups
from actlab.sparsity.methods.base import ThresholdMethod, register_method


@register_method
class Cats(ThresholdMethod):
    config_cls = CatsConfig

    def make_groups(self, split: bool) -> list[Group]:
        return act_groups(self.model)
