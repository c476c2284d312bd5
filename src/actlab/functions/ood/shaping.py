"""Activation shaping of features before they are scored: ReAct's clipping, ASH-p/b/s and SCALE.

The definitions are those of pytorch-ood 0.4.0 (and of the papers' reference code), on features of any
shape ``[batch, ...]``: every entry after the batch dimension counts as one activation of that sample
(pytorch-ood takes ``[B, C, H, W]``; pooled ``[B, D]`` features are its ``[B, D, 1, 1]``).

With ``n`` activations per sample and pruning fraction ``p``, ``k = n - round(n * p)`` are kept (the
``k`` largest; ``round`` halves to even, as ``np.round``):

* ReAct: ``min(x, c)``, ``c`` a percentile of in-distribution activations (:func:`percentile`).
* ASH-p: the others set to zero.
* ASH-b: the kept set to ``sum(x) / k``, the sum over *all* activations (so the sum is preserved), not the
  mean of the kept ones.
* ASH-s: the pruned ``x`` times ``exp(s1 / s2)``, ``s1 = sum(x)``, ``s2`` = sum of the kept.
* SCALE: the *unpruned* ``x`` times ``exp(s1 / s2)`` (the top-k only sets the factor).

Example:
    >>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> ash_p(x, 0.5)
    tensor([[0., 0., 3., 4.]])
    >>> ash_b(x, 0.5)
    tensor([[0., 0., 5., 5.]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from actlab.functions.ood.errors import OODError

__all__ = ["SHAPINGS", "ash_b", "ash_p", "ash_s", "kept_count", "percentile", "react", "scale"]


def _check_fraction(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise OODError(f"{name} must be a fraction in [0, 1], got {p}")
    return float(p)


def kept_count(n: int, p: float) -> int:
    """How many of ``n`` activations a pruning fraction ``p`` keeps: ``n - round(n * p)``.

    Raises:
        OODError: ``p`` outside [0, 1], or it keeps nothing (ASH and SCALE divide by the kept sum).
    """
    k = n - round(n * _check_fraction("percentile", p))
    if k < 1:
        raise OODError(f"percentile {p} keeps none of {n} activations; use a smaller percentile")
    return k


def _flat(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 2:
        raise OODError(f"features must be [batch, ...], got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)  # [B, n]


def _top(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    t = _flat(x)
    return torch.topk(t, kept_count(t.shape[1], p), dim=1)  # values, indices: [B, k]


def percentile(x: torch.Tensor, q: float) -> float:
    """The ``q``-quantile of all entries of ``x`` by linear interpolation (``np.percentile(x, 100 q)``).

    Computed in float64 on a sort, since ``torch.quantile`` refuses inputs over 2^24 entries.

    Example:
        >>> percentile(torch.arange(11.0), 0.9)
        9.0
    """
    v = x.detach().reshape(-1).double().sort().values
    if v.numel() == 0:
        raise OODError("no activations to take a percentile of")
    pos = _check_fraction("percentile", q) * (v.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, v.numel() - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def react(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """ReAct: every activation clipped from above at ``threshold`` (below it nothing changes)."""
    return x.clamp(max=threshold)


def ash_p(x: torch.Tensor, p: float = 0.65) -> torch.Tensor:
    """ASH-p: the lowest fraction ``p`` of each sample's activations set to zero, the rest kept."""
    v, i = _top(x, p)
    return torch.zeros_like(_flat(x)).scatter_(1, i, v).view_as(x)


def ash_b(x: torch.Tensor, p: float = 0.65) -> torch.Tensor:
    """ASH-b: pruned as ASH-p, the kept set to ``sum(x) / k`` (the sample's whole sum over the kept count)."""
    v, i = _top(x, p)
    fill = (_flat(x).sum(dim=1) / v.shape[1])[:, None].expand_as(v)  # [B, k]
    return torch.zeros_like(_flat(x)).scatter_(1, i, fill).view_as(x)


def _sums(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    v, i = _top(x, p)
    return _flat(x).sum(dim=1), v.sum(dim=1), i  # s1, s2: [B]


def ash_s(x: torch.Tensor, p: float = 0.65) -> torch.Tensor:
    """ASH-s: pruned as ASH-p, the kept multiplied by ``exp(s1 / s2)`` (all over kept sum)."""
    s1, s2, _ = _sums(x, p)
    factor = torch.exp(s1 / s2).reshape(-1, *[1] * (x.dim() - 1))
    return ash_p(x, p) * factor


def scale(x: torch.Tensor, p: float = 0.65) -> torch.Tensor:
    """SCALE: every activation (none pruned) multiplied by ``exp(s1 / s2)`` as ASH-s would be."""
    s1, s2, _ = _sums(x, p)
    return x * torch.exp(s1 / s2).reshape(-1, *[1] * (x.dim() - 1))


#: the pruning/rescaling shapings by name (ReAct needs a fitted threshold, so it is not one of these)
SHAPINGS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "ash-p": ash_p, "ash-b": ash_b, "ash-s": ash_s, "scale": scale,
}
