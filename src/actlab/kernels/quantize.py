"""Whole-model weight formats: every decoder linear on the packed kernels, or fake-quantized in torch.

* :func:`quantize_linears_` turns each decoder layer's plain ``nn.Linear`` (q/k/v fused as the plan swap
  fuses them, o, gate/up fused, down; ``lm_head`` when asked) into a dense :class:`SparseLinear` (no
  threshold) in one weight format, so a dense model decodes through the same quantized kernels.
  :func:`actlab.kernels.swap.remove_kernels` (or ``actlab.remove_``) turns them back into ``nn.Linear``
  layers holding the *dequantized* weights (not bit-identical to the originals for bf16/int8/int4).
* :func:`fake_quantize_` replaces each of those linears' weights in place by their format's rounding
  (``pack(w.t(), fmt).dequantize().t()``): the normal torch path then computes what the kernels would, so a
  format's perplexity can be measured with or without a masking plan.

The ``lm_head`` (when included) takes :func:`head_format` of the format: int4 models keep an int8
``lm_head``, as llama.cpp keeps its output matrix above 4 bits. On SmolLM2 (tied embedding) an int4
``lm_head`` costs +4.5% perplexity where an int8 one costs +0.1% (both with int4 decoder layers), for
10% of the int4 model's bytes.

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

__all__ = ["HEAD_FORMAT", "decoder_linear_groups", "fake_quantize_", "head_format", "quantize_linears_"]

# Formats whose lm_head is kept in another format by default (see the module docstring).
HEAD_FORMAT: dict[str, str] = {"int4": "int8"}


def head_format(weights: str, head_weights: str | None = None) -> str:
    """The ``lm_head``'s format for a model in format ``weights``: ``head_weights`` if given, else
    :data:`HEAD_FORMAT`'s choice, else ``weights`` itself.

    Example:
        >>> head_format("int4"), head_format("int8"), head_format("int4", "int4")
        ('int8', 'int8', 'int4')
    """
    return check_format(head_weights if head_weights is not None else HEAD_FORMAT.get(weights, weights))


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
    head_weights: str | None = None,
) -> nn.Module:
    """Every plain decoder-layer ``nn.Linear`` (and ``lm_head`` if asked) becomes a dense
    :class:`SparseLinear` in format ``weights``; in place, returns the model.

    Layers that are already kernel modules, hooked, or not ``nn.Linear`` are left as they are, so this
    runs after a plan's kernels were installed (``install_kernels`` calls it for the rest of the model,
    passing the paths the masking path still needs in ``skip``). The ``lm_head`` takes
    :func:`head_format` (``head_weights`` to override: int4 keeps an int8 ``lm_head`` by default).

    Raises:
        ValueError: an unknown format (naming the allowed ones) or a bad group.

    Example:
        >>> model, _ = actlab.load_model("random:tiny-llama")      # doctest: +SKIP
        >>> quantize_linears_(model, "int4", lm_head=True)          # doctest: +SKIP
    """
    from actlab.kernels.swap import FusedMember, _Group, _set

    check_format(weights)
    head = _head_paths(model, lm_head)
    head_fmt = head_format(weights, head_weights)
    for paths in decoder_linear_groups(model, lm_head):
        layers = [_plain(model, p) for p in paths]
        if any(m is None for m in layers) or any(p in skip for p in paths):
            continue
        fmt = head_fmt if paths[0] in head else weights
        fused = SparseLinear.from_linear(layers if len(layers) > 1 else layers[0], None, fmt, group)
        if len(layers) == 1:
            _set(model, paths[0], fused)
            continue
        shared = _Group(fused, list(paths))
        for i, path in enumerate(paths):
            _set(model, path, FusedMember(shared, i))
    return model


@torch.no_grad()
def fake_quantize_(model: nn.Module, weights: str, lm_head: bool = True, group: int | None = None,
                   head_weights: str | None = None) -> nn.Module:
    """Rounds every decoder linear's weight (and ``lm_head``'s, by default) to format ``weights`` in
    place (q/k/v and gate/up concatenated as the kernels pack them), keeping ``nn.Linear`` and the model's dtype: the torch path then computes what the packed
    kernels compute (up to summation order). Not reversible. Returns the model.

    With a masking plan, ``actlab.apply_`` it first: a plan checks the weights it was calibrated on.
    A tied ``lm_head`` shares its weight with the embedding: rounding it rounds the embedding too, so
    for such models pass ``lm_head=False`` unless that is wanted. The ``lm_head`` takes
    :func:`head_format` (int8 for int4), as :func:`quantize_linears_` does.

    Example:
        >>> lin = nn.Linear(64, 32)
        >>> m = nn.Sequential(lin)   # any model with an adapter; see quantize_linears_
        >>> w = pack(lin.weight.detach().t(), "int8").dequantize().t()
        >>> bool((w - lin.weight).abs().max() < 0.01)
        True
    """
    check_format(weights)
    head = _head_paths(model, lm_head)
    head_fmt = head_format(weights, head_weights)
    for paths in decoder_linear_groups(model, lm_head):
        mods = [model.get_submodule(p) if _has(model, p) else None for p in paths]
        if not all(isinstance(m, nn.Linear) for m in mods):
            continue
        w = torch.cat([m.weight.detach() for m in mods]) if len(mods) > 1 else mods[0].weight.detach()
        fmt = head_fmt if paths[0] in head else weights
        wq = pack(w.t(), fmt, group).dequantize().t()
        for m, part in zip(mods, wq.split([m.out_features for m in mods]), strict=True):
            m.weight.copy_(part.to(m.weight.dtype))
    return model


def _head_paths(model: nn.Module, lm_head: bool) -> set[str]:
    return set(get_adapter(model).lm_head) if lm_head else set()


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True
