"""Whole-model weight formats: every decoder linear on the packed kernels, or fake-quantized in torch.

* :func:`quantize_linears_` turns each decoder layer's plain ``nn.Linear`` (q/k/v fused as the plan swap
  fuses them, o, gate/up fused, down; ``lm_head`` when asked) into a dense :class:`SparseLinear` (no
  threshold) in one weight format, so a dense model decodes through the same quantized kernels.
  :func:`actlab.kernels.swap.remove_kernels` (or ``actlab.remove_``) turns them back into ``nn.Linear``
  layers holding the *dequantized* weights (not bit-identical to the originals for bf16/int8/int4).
* :func:`fake_quantize_` replaces each of those linears' weights in place by their format's rounding
  (``pack(w.t(), fmt).dequantize().t()``): the normal torch path then computes what the kernels would, so a
  format's perplexity can be measured with or without a masking plan.

Example:
    >>> model, _ = actlab.load_model("random:tiny-llama")      # doctest: +SKIP
    >>> quantize_linears_(model, "int8")                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from torch import nn

from actlab.kernels.linear import SparseLinear
from actlab.kernels.quant import check_format, pack
from actlab.models.adapters import get_adapter

__all__ = ["decoder_linear_groups", "fake_quantize_", "quantize_linears_"]


def decoder_linear_groups(model: nn.Module, lm_head: bool = False) -> Iterator[tuple[str, ...]]:
    """Paths of the linears that read one input, per decoder layer (qkv, o, gate/up, down), then the
    ``lm_head`` when asked; only groups whose every member exists.

    Example:
        >>> model, _ = actlab.load_model("random:tiny-llama")      # doctest: +SKIP
        >>> next(decoder_linear_groups(model))                    # doctest: +SKIP
        ('model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', 'model.layers.0.self_attn.v_proj')
    """
    adapter = get_adapter(model)
    layers = model.get_submodule(adapter.layers)
    for i in range(len(layers)):
        prefix = f"{adapter.layers}.{i}"
        for group in (adapter.qkv, (adapter.o,), adapter.mlp_in, (adapter.down,)):
            yield tuple(f"{prefix}.{p}" for p in group)
    if lm_head:
        for p in adapter.lm_head:
            yield (p,)


def _plain(model: nn.Module, path: str) -> nn.Linear | None:
    from actlab.kernels.swap import _is_plain_linear

    try:
        m = model.get_submodule(path)
    except AttributeError:
        return None
    return m if _is_plain_linear(m) else None


def quantize_linears_(
    model: nn.Module,
    weights: str,
    lm_head: bool = False,
    group: int | None = None,
    skip: Collection[str] = (),
) -> nn.Module:
    """Every plain decoder-layer ``nn.Linear`` (and ``lm_head`` if asked) becomes a dense
    :class:`SparseLinear` in format ``weights``; in place, returns the model.

    Layers that are already kernel modules, hooked, or not ``nn.Linear`` are left as they are, so this
    runs after a plan's kernels were installed (``install_kernels`` calls it for the rest of the model,
    passing the paths the masking path still needs in ``skip``).

    Raises:
        ValueError: an unknown format (naming the allowed ones) or a bad group.

    Example:
        >>> model, _ = actlab.load_model("random:tiny-llama")      # doctest: +SKIP
        >>> quantize_linears_(model, "int4", lm_head=True)          # doctest: +SKIP
    """
    from actlab.kernels.swap import FusedMember, _Group, _set

    check_format(weights)
    for paths in decoder_linear_groups(model, lm_head):
        layers = [_plain(model, p) for p in paths]
        if any(m is None for m in layers) or any(p in skip for p in paths):
            continue
        fused = SparseLinear.from_linear(layers if len(layers) > 1 else layers[0], None, weights, group)
        if len(layers) == 1:
            _set(model, paths[0], fused)
            continue
        shared = _Group(fused, list(paths))
        for i, path in enumerate(paths):
            _set(model, path, FusedMember(shared, i))
    return model


@torch.no_grad()
def fake_quantize_(model: nn.Module, weights: str, lm_head: bool = True, group: int | None = None) -> nn.Module:
    """Rounds every decoder linear's weight (and ``lm_head``'s, by default) to format ``weights`` in
    place (q/k/v and gate/up concatenated as the kernels pack them), keeping ``nn.Linear`` and the model's dtype: the torch path then computes what the packed
    kernels compute (up to summation order). Not reversible. Returns the model.

    With a masking plan, ``actlab.apply_`` it first: a plan checks the weights it was calibrated on.
    A tied ``lm_head`` shares its weight with the embedding: rounding it rounds the embedding too, so
    for such models pass ``lm_head=False`` unless that is wanted.

    Example:
        >>> lin = nn.Linear(64, 32)
        >>> m = nn.Sequential(lin)   # any model with an adapter; see quantize_linears_
        >>> w = pack(lin.weight.detach().t(), "int8").dequantize().t()
        >>> bool((w - lin.weight).abs().max() < 0.01)
        True
    """
    check_format(weights)
    for paths in decoder_linear_groups(model, lm_head):
        mods = [model.get_submodule(p) if _has(model, p) else None for p in paths]
        if not all(isinstance(m, nn.Linear) for m in mods):
            continue
        # packed together as quantize_linears_ fuses them: a scale group may span q/k/v outputs
        w = torch.cat([m.weight.detach() for m in mods]) if len(mods) > 1 else mods[0].weight.detach()
        wq = pack(w.t(), weights, group).dequantize().t()
        for m, part in zip(mods, wq.split([m.out_features for m in mods]), strict=True):
            m.weight.copy_(part.to(m.weight.dtype))
    return model


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True
