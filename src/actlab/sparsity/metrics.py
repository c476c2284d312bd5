"""Model-wide sparsity and the fraction of weight bytes a token skips.

* ``sparsity_model_wide`` (TEAL's definition): over the sparsifiable linears (q, k, v, o, gate, up, down),
  the parameter-weighted mean fraction of each linear's weights a token does not need. An ``input`` mask at
  sparsity ``s`` skips ``s`` of each consumer's columns; an ``act`` mask skips ``s`` of up's rows and of
  down's columns. Two masks on one linear combine as ``1 - (1 - s1)(1 - s2)``.
* ``bytes_skipped_frac``: the bytes of the same skipped weights over *all* linear weight bytes a token
  reads, biases and the LM head included (a tied embedding counts once, as the head); that ratio bounds a
  memory-bound decode step's speed-up. Defined once, in :mod:`actlab.models.weight_bytes`, which
  ``actlab bench`` and ``actlab optimize`` use too.

Example:
    >>> sizes = {"q": 100, "down": 300}
    >>> model_wide([(("q",), 0.5), (("down",), 0.5)], sizes)
    0.5
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from actlab.models.adapters import linear_weight
from actlab.models.weight_bytes import bytes_skipped_frac
from actlab.sparsity.groups import sparsifiable_linears


def _inner(m: nn.Module) -> nn.Module:
    return getattr(m, "inner", m)


def linear_sizes(model: nn.Module) -> dict[str, int]:
    """Weight parameter count of every sparsifiable linear, by module path."""
    sizes = {}
    for path in sparsifiable_linears(model):
        w = linear_weight(_inner(model.get_submodule(path)))
        sizes[path] = w.shape[0] * w.shape[1]
    return sizes


def skipped_fractions(items: Iterable[tuple[tuple[str, ...], float]]) -> dict[str, float]:
    """Per linear path, the fraction of its weights skipped, from ``(consumers, sparsity)`` pairs."""
    kept: dict[str, float] = {}
    for consumers, s in items:
        for path in consumers:
            kept[path] = kept.get(path, 1.0) * (1.0 - s)
    return {p: 1.0 - k for p, k in kept.items()}


def model_wide(items: Iterable[tuple[tuple[str, ...], float]], sizes: dict[str, int]) -> float:
    """Parameter-weighted sparsity over ``sizes`` (the sparsifiable linears) from ``(consumers, s)`` pairs."""
    skipped = skipped_fractions(items)
    total = sum(sizes.values())
    return sum(sizes[p] * f for p, f in skipped.items() if p in sizes) / total if total else 0.0


def plan_metrics(model: nn.Module, items: list[tuple[tuple[str, ...], float, str]],
                 rotations: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """``sparsity_model_wide``, ``bytes_skipped_frac`` and per-site-kind sparsity from ``(consumers, s, site)``.

    Per-site-kind values are the parameter-weighted sparsity over the linears of that kind only. A rotated
    input (``rotations``: site -> ``Q``) makes a token read ``Q`` too: its weights are subtracted from the
    skipped ones in ``bytes_skipped_frac`` and in ``sparsity_model_wide_net`` (the mask sparsity,
    ``sparsity_model_wide``, keeps TEAL's definition).
    """
    sizes = linear_sizes(model)
    pairs = [(c, s) for c, s, _ in items]
    skipped = skipped_fractions(pairs)
    skipped_params = sum(sizes[p] * f for p, f in skipped.items() if p in sizes)
    from actlab.sparsity.rotation import rotation_params

    extra = sum(rotation_params(q) for q in (rotations or {}).values())
    extra_bytes = sum(rotation_params(q) * q.element_size() for q in (rotations or {}).values())
    out = {
        "sparsity_model_wide": skipped_params / sum(sizes.values()),
        "bytes_skipped_frac": bytes_skipped_frac(model, skipped, extra_read_bytes=extra_bytes),
    }
    if rotations:
        out["sparsity_model_wide_net"] = (skipped_params - extra) / sum(sizes.values())
        out["rotation_params"] = extra
    by_kind: dict[str, list[tuple[float, int]]] = {}
    for consumers, s, site in items:
        kind = site.split(".", 2)[2]
        by_kind.setdefault(kind, []).extend((s, sizes[p]) for p in consumers if p in sizes)
    for kind, vals in by_kind.items():
        out[f"sparsity.{kind}"] = sum(s * n for s, n in vals) / sum(n for _, n in vals)
    return out


def entry_metrics(model: nn.Module, entries: Iterable) -> dict[str, float]:
    """:func:`plan_metrics` of plan entries at their calibrated sparsity (what ``plan.metrics`` holds).

    Example:
        >>> entry_metrics(model, plan.entries) == plan.metrics    # doctest: +SKIP
        True
    """
    entries = list(entries)
    return plan_metrics(model, [(e.consumers, e.sparsity, e.site) for e in entries],
                        rotations={e.site: e.rotation for e in entries if e.rotation is not None})
