"""OOD detection metrics from outlier scores, as pytorch-ood 0.4.0 computes them (torch only, float64).

Outliers are the positive class and larger scores mean more outlying (pytorch-ood labels them ``< 0``).
Every unique score is a threshold; samples with equal scores enter the curves at the same threshold, so
a tie between an inlier and an outlier is a diagonal step of the ROC curve and counts half in the AUROC.

* AUROC: trapezoidal area under (FPR, TPR), from (0, 0) to (1, 1).
* AUPR-OUT / AUPR-IN: trapezoidal area under sklearn's precision-recall curve (one point per threshold,
  ending at recall 0, precision 1), outliers / inliers positive (for inliers, lower scores rank first).
* FPR95TPR: the FPR at the first threshold whose TPR reaches 0.95 (key ``FPR{100 tpr:g}TPR``).

Example:
    >>> m = ood_metrics(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([2.0, 3.0]))
    >>> m["AUROC"], m["FPR95TPR"]
    (0.9166666666666666, 0.3333333333333333)
"""

from __future__ import annotations

import torch

from actlab.functions.ood.errors import OODError

__all__ = ["aupr", "auroc", "fpr_at_tpr", "ood_metrics"]


class _Counts:
    """Cumulative positives ``tps`` and negatives ``fps`` with a score >= each unique score, descending."""

    def __init__(self, scores_in: torch.Tensor, scores_out: torch.Tensor) -> None:
        s_in, s_out = scores_in.detach().reshape(-1), scores_out.detach().reshape(-1)
        if s_in.numel() == 0 or s_out.numel() == 0:
            raise OODError(f"need in-distribution and outlier scores, got {s_in.numel()} and {s_out.numel()}")
        scores = torch.cat([s_in, s_out.to(s_in.device)])
        if scores.is_floating_point() and bool(torch.isnan(scores).any()):
            raise OODError(f"scores contain {int(torch.isnan(scores).sum())} NaN values; check the features")
        positive = torch.cat([torch.zeros_like(s_in, dtype=torch.long), torch.ones_like(s_out, dtype=torch.long)])
        order = torch.argsort(scores, descending=True)
        ranked = scores[order]
        # the last index of each run of equal scores: ties enter together, whatever their order
        last = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
        last[:-1] = ranked[1:] != ranked[:-1]
        idx = torch.nonzero(last).reshape(-1)
        self.tps = torch.cumsum(positive[order], dim=0)[idx]  # int64: exact at any size
        self.fps = idx + 1 - self.tps

    def roc(self) -> tuple[torch.Tensor, torch.Tensor]:
        zero = self.tps.new_zeros(1)
        fpr = torch.cat([zero, self.fps]).double() / float(self.fps[-1])
        tpr = torch.cat([zero, self.tps]).double() / float(self.tps[-1])
        return fpr, tpr

    def reversed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The counts of ``-scores`` with the inliers positive (for AUPR-IN)."""
        zero = self.tps.new_zeros(1)
        tps = self.fps[-1] - torch.cat([zero, self.fps[:-1]])
        fps = self.tps[-1] - torch.cat([zero, self.tps[:-1]])
        return tps.flip(0), fps.flip(0)


def _area(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x[1:] - x[:-1]) * (y[1:] + y[:-1])).sum() / 2)


def _aupr(tps: torch.Tensor, fps: torch.Tensor) -> float:
    tps, fps = tps.double(), fps.double()
    precision = torch.cat([(tps / (tps + fps)).flip(0), tps.new_ones(1)])
    recall = torch.cat([(tps / tps[-1]).flip(0), tps.new_zeros(1)])
    return -_area(recall, precision)  # recall decreases along the curve


def _fpr_at(counts: _Counts, tpr: float) -> float:
    if not 0.0 <= tpr <= 1.0:
        raise OODError(f"tpr must be a fraction in [0, 1], got {tpr}")
    fpr_c, tpr_c = counts.roc()
    return float(fpr_c[torch.searchsorted(tpr_c, torch.tensor([tpr], dtype=tpr_c.dtype))[0]])


def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """Area under the ROC curve with outliers positive (ties count half)."""
    return _area(*_Counts(scores_in, scores_out).roc())


def aupr(scores_in: torch.Tensor, scores_out: torch.Tensor, positive: str = "out") -> float:
    """Area under the precision-recall curve with outliers (``"out"``) or inliers (``"in"``) positive."""
    counts = _Counts(scores_in, scores_out)
    pick = {"out": lambda: (counts.tps, counts.fps), "in": counts.reversed}
    if positive not in pick:
        raise OODError(f"positive must be 'in' or 'out', got {positive!r}")
    return _aupr(*pick[positive]())


def fpr_at_tpr(scores_in: torch.Tensor, scores_out: torch.Tensor, tpr: float = 0.95) -> float:
    """Share of inliers flagged at the first threshold that flags a fraction ``tpr`` of the outliers."""
    return _fpr_at(_Counts(scores_in, scores_out), tpr)


def ood_metrics(scores_in: torch.Tensor, scores_out: torch.Tensor, tpr: float = 0.95) -> dict[str, float]:
    """AUROC, AUPR-IN, AUPR-OUT and FPR at ``tpr`` TPR, keyed as pytorch-ood's ``OODMetrics`` keys them.

    Args:
        scores_in: outlier scores of in-distribution samples (any shape; flattened).
        scores_out: outlier scores of outliers.
        tpr: the true positive rate of the FPR entry (``FPR95TPR`` for 0.95).

    Raises:
        OODError: either side empty, NaN scores, or ``tpr`` outside [0, 1].
    """
    counts = _Counts(scores_in, scores_out)
    return {
        "AUROC": _area(*counts.roc()),
        "AUPR-IN": _aupr(*counts.reversed()),
        "AUPR-OUT": _aupr(counts.tps, counts.fps),
        f"FPR{tpr * 100:g}TPR": _fpr_at(counts, tpr),
    }
