"""Scores and quantile tables: from a calibration sample to a threshold at any sparsity level.

Every threshold method scores channel ``i`` of a group as ``|x_i| * w_i`` with a per-channel weight ``w``
(1 for TEAL and CATS, ``||W[:, i]||`` for WINA, ``||W_down[:, i]||`` for CETT, ``RMS(up_i)`` for CHESS) and
keeps it iff the score passes one scalar ``t``: the per-channel threshold on ``|x_i|`` is ``t / w_i``.
A :class:`QuantileTable` of the scores on the calibration sample turns a sparsity level into ``t``.

Example:
    >>> import torch
    >>> table = QuantileTable.from_scores(torch.arange(1000.0))
    >>> round(table.threshold(0.25))
    250
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: resolution of the stored quantile grid: levels 0, 1/N, ..., 1
GRID = 1000


@dataclass(frozen=True)
class QuantileTable:
    """Score quantiles at levels ``0, 1/GRID, ..., 1`` (``values[k]`` = the ``k/GRID`` quantile)."""

    values: torch.Tensor  # [GRID + 1], non-decreasing

    @classmethod
    def from_scores(cls, scores: torch.Tensor) -> QuantileTable:
        """Quantiles of a flat tensor of non-negative scores (any size; sorted once)."""
        s = scores.detach().float().flatten().sort().values  # [n]
        if s.numel() == 0:
            return cls(torch.zeros(GRID + 1))
        pos = torch.linspace(0, s.numel() - 1, GRID + 1)
        lo = pos.floor().long()
        hi = pos.ceil().long()
        frac = pos - lo
        return cls(s[lo] + (s[hi] - s[lo]) * frac)

    def threshold(self, level: float) -> float:
        """The score threshold whose calibration sparsity is ``level`` (0 keeps every non-zero)."""
        if level <= 0.0:
            return 0.0
        level = min(level, 1.0)
        pos = level * GRID
        k = min(int(pos), GRID - 1)
        frac = pos - k
        return float(self.values[k] + (self.values[k + 1] - self.values[k]) * frac)


def channel_thresholds(t: float, weights: torch.Tensor | None) -> torch.Tensor:
    """Threshold on ``|x_i|`` from a score threshold: ``t`` (shape []) or ``t / w_i`` (shape [width]).

    A channel with ``w_i = 0`` contributes nothing, so it gets ``+inf`` (always dropped) unless ``t = 0``.
    """
    if weights is None:
        return torch.tensor(float(t))
    if t == 0.0:
        return torch.zeros_like(weights, dtype=torch.float32)
    w = weights.float()
    return torch.where(w > 0, t / w.clamp_min(torch.finfo(torch.float32).tiny), torch.tensor(float("inf")))


def sparsity_of(rows: torch.Tensor, threshold: torch.Tensor) -> float:
    """Fraction of ``|x|`` values in ``rows`` ([n, width]) that a threshold drops (``|x| <= t``)."""
    if rows.numel() == 0:
        return 0.0
    return float((rows <= threshold).float().mean())
