"""Groups: the units a plan gives one threshold (a scalar or a per-channel vector).

Every threshold method reduces to one of two shapes the kernels consume:

* ``kind="input"``: keep ``x_i`` iff ``|x_i| > t_i`` at the input of one or more linears sharing that input
  (q/k/v share ``attn.qkv_in``; when q, k and v get different thresholds they are separate groups);
* ``kind="act"``: keep neuron ``i`` of a gated MLP iff ``|act(gate)_i| > t_i``; its up row and down column
  are then not needed (the gate stays dense).

Example:
    >>> groups = layer_groups(model, split=False)            # doctest: +SKIP
    >>> [g.name for g in groups if g.layer == 0]             # doctest: +SKIP
    ['layers.0.attn.qkv_in', 'layers.0.attn.o_in', 'layers.0.mlp.gate_up_in', 'layers.0.mlp.down_in']
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from actlab.activations.sites import resolve_sites
from actlab.models.adapters import get_adapter, linear_weight
from actlab.sparsity.errors import PlanError

INPUT_KINDS = ("attn.qkv_in", "attn.o_in", "mlp.gate_up_in", "mlp.in", "mlp.down_in")


@dataclass(frozen=True)
class Group:
    """One thresholded unit of a plan.

    Attributes:
        site: canonical site name of the tensor thresholded (``layers.3.attn.qkv_in``, ``layers.3.mlp.act_out``).
        layer: layer index.
        kind: ``"input"`` or ``"act"`` (see the module docstring), or ``"topk"`` (per-token, masking only).
        consumers: module paths of the linears whose weights the mask lets a token skip.
        modules: module paths the masking path wraps (the consumers for ``input``, the act module for ``act``).
        width: number of channels thresholded (the linears' ``in_features``, or ``d_ff`` for ``act``).
    """

    site: str
    layer: int
    kind: str
    consumers: tuple[str, ...]
    modules: tuple[str, ...]
    width: int

    @property
    def name(self) -> str:
        """Unique key: the site, plus the consumer's last path part when a shared input is split."""
        return self.site if not self.split_from_site else f"{self.site}:{self.consumers[0].rsplit('.', 1)[-1]}"

    @property
    def split_from_site(self) -> bool:
        return self.kind == "input" and self.site.endswith(("qkv_in", "gate_up_in")) and len(self.consumers) == 1

    @property
    def site_kind(self) -> str:
        return self.site.split(".", 2)[2]


def linear_params(model: nn.Module, path: str) -> int:
    """Parameter count of a linear's weight (bias excluded: it is always read)."""
    w = linear_weight(model.get_submodule(path))
    return w.shape[0] * w.shape[1]


def linear_in_features(model: nn.Module, path: str) -> int:
    return linear_weight(model.get_submodule(path)).shape[1]


def sparsifiable_linears(model: nn.Module) -> list[str]:
    """Module paths of every linear a plan may sparsify (q/k/v, o, gate/up, down of every layer)."""
    paths: list[str] = []
    for site in resolve_sites(model).values():
        if site.direction == "input":
            paths.extend(p for p in site.feeds if p not in paths)
    return paths


def layer_groups(model: nn.Module, kinds: tuple[str, ...] = INPUT_KINDS, split: bool = False) -> list[Group]:
    """Input groups of the model for the given site kinds, in model order.

    Args:
        kinds: site kinds to include (``mlp.gate_up_in`` and ``mlp.in`` both mean "the MLP input").
        split: one group per consumer linear (q, k, v apart) instead of one per shared input.
    """
    groups: list[Group] = []
    for site in resolve_sites(model).values():
        if site.direction != "input" or site.kind not in kinds:
            continue
        width = linear_in_features(model, site.feeds[0])
        parts = [(p,) for p in site.feeds] if split and len(site.feeds) > 1 else [site.feeds]
        for consumers in parts:
            groups.append(Group(site.name, site.layer, "input", consumers, consumers, width))
    return groups


def act_groups(model: nn.Module) -> list[Group]:
    """One ``act`` group per layer of a gated MLP (``|act(gate)|`` thresholded; up and down skipped).

    Raises:
        PlanError: the MLP is not gated, or its gate and up are one fused linear (not supported yet).
    """
    ad = get_adapter(model)
    if not ad.gated or ad.fused_gate_up or len(ad.mlp_in) != 2:
        raise PlanError(
            f"activation-threshold methods (CATS, CHESS) need a gated MLP with separate gate and up linears; "
            f"{model.config.model_type} has none: use teal, wina or cett"
        )
    groups: list[Group] = []
    for site in resolve_sites(model, "mlp.act_out").values():
        prefix = site.module_paths[0][: -len(ad.act) - 1]
        up, down = f"{prefix}.{ad.mlp_in[1]}", f"{prefix}.{ad.down}"
        width = linear_in_features(model, down)
        groups.append(Group(site.name, site.layer, "act", (up, down), site.module_paths, width))
    return groups


def group_params(model: nn.Module, group: Group) -> int:
    """Weights a token skips when this group is fully masked."""
    return sum(linear_params(model, p) for p in group.consumers)


def gated_mlp_paths(model: nn.Module, layer: int) -> dict[str, str]:
    """Module paths of one layer's gated MLP: ``gate``, ``up``, ``down``, ``act``.

    What a kernel needs to turn an ``act`` plan entry into ``SparseGatedMLP(gate, up, down, act, threshold)``.

    Example:
        >>> gated_mlp_paths(model, 3)["gate"]     # doctest: +SKIP
        'model.layers.3.mlp.gate_proj'
    """
    ad = get_adapter(model)
    if not ad.gated or len(ad.mlp_in) != 2:
        raise PlanError(f"{model.config.model_type} has no gated MLP with separate gate and up linears")
    prefix = f"{ad.layers}.{layer}"
    gate, up = ad.mlp_in
    return {"gate": f"{prefix}.{gate}", "up": f"{prefix}.{up}", "down": f"{prefix}.{ad.down}", "act": f"{prefix}.{ad.act}"}
