"""The selection policy: when a plan meets a quality budget, and which candidate plan to keep.

A budget "perplexity rises by at most P %" is a claim about text the plan has not seen. The increase is measured
on held-out windows, so it is an estimate with sampling error; choosing on the estimate alone keeps plans that
land over budget on new text about half the time at the boundary. The policy therefore accepts a plan only
when the *upper end* of a confidence interval for its increase is within the budget.

The interval (method ``t-windows``): for each window ``w`` the paired difference
``d_w = nll_sparse(w) - nll_dense(w)`` (mean nats per scored token, dense and sparse on the same window). With
equal-length windows the mean of ``d`` is exactly ``log(ppl_sparse / ppl_dense)``, so a Student-t interval on
the mean of ``d`` over windows, ``mean ± t(n-1) · sd / sqrt(n)``, maps to an interval on the perplexity
increase, ``100 · (exp(.) - 1)`` percent. Windows, not tokens, are the samples: tokens within a window are far
from independent. ``confidence`` is the two-sided level of the interval; a plan is accepted when the interval's
upper end is within the budget (a one-sided bound at ``(1 + confidence) / 2``), so the interval a report shows
is the one the choice was made with.

Example:
    >>> import torch
    >>> dense, sparse = torch.tensor([3.0, 3.2, 2.9, 3.1]), torch.tensor([3.02, 3.23, 2.91, 3.13])
    >>> ci = increase_interval(dense, sparse, confidence=0.95)
    >>> round(ci.point_pct, 2), ci.lo_pct < ci.point_pct < ci.hi_pct
    (2.25, True)
    >>> Budget(5.0).accepts(ci)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from actlab.sparsity.errors import PlanError

METHODS = ("t-windows", "point")


@dataclass(frozen=True)
class Interval:
    """A perplexity increase in percent: the point estimate and its interval, over ``windows`` windows."""

    point_pct: float
    lo_pct: float
    hi_pct: float
    windows: int

    def as_list(self) -> list[float]:
        """``[lo, hi]`` (percent), the form summary.json uses."""
        return [self.lo_pct, self.hi_pct]


@dataclass(frozen=True)
class Budget:
    """A quality budget: perplexity rises by at most ``max_ppl_increase`` percent, checked by ``method``.

    ``method="t-windows"`` accepts a plan when the upper end of its ``confidence`` interval is within the budget;
    ``method="point"`` compares the point estimate (the behaviour before intervals; no margin).

    Example:
        >>> Budget(1.0).to_dict()
        {'max_ppl_increase': 1.0, 'confidence': 0.95, 'method': 't-windows'}
    """

    max_ppl_increase: float
    confidence: float = 0.95
    method: str = "t-windows"

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_ppl_increase) or self.max_ppl_increase <= 0:
            raise PlanError(f"--max-ppl-increase must be positive (a percentage), got {self.max_ppl_increase}")
        if self.method not in METHODS:
            raise PlanError(f"unknown budget method {self.method!r}; use one of {', '.join(METHODS)}")
        if not 0.5 <= self.confidence < 1:
            raise PlanError(f"confidence must be in [0.5, 1), got {self.confidence}")

    def bound(self, ci: Interval) -> float:
        """The increase (percent) the budget is checked against: the interval's upper end, or the point."""
        return ci.point_pct if self.method == "point" else ci.hi_pct

    def accepts(self, ci: Interval) -> bool:
        """Whether a plan with this measured interval keeps the budget."""
        return self.bound(ci) <= self.max_ppl_increase + 1e-9

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``p`` in (0.5, 1)).

    Bisection on the CDF, integrated from the density with Simpson's rule: exact to ~1e-6 for the small
    ``df`` a handful of windows gives, without scipy.

    Example:
        >>> round(t_quantile(0.975, 7), 3)
        2.365
    """
    if df < 1 or not 0.5 < p < 1:
        raise ValueError(f"need df >= 1 and 0.5 < p < 1, got df={df}, p={p}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, n: int = 400) -> float:
        h = x / n
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def increase_interval(dense_nll: torch.Tensor, sparse_nll: torch.Tensor, confidence: float = 0.95) -> Interval:
    """The perplexity increase (percent) and its two-sided ``confidence`` interval over paired windows.

    Args:
        dense_nll, sparse_nll: ``[n_windows]`` mean NLL per window, dense and sparse, on the same windows.

    Raises:
        PlanError: the two do not pair up, or fewer than two windows (no spread to bound with).
    """
    if dense_nll.shape != sparse_nll.shape or dense_nll.dim() != 1:
        raise PlanError(f"per-window NLLs must pair up: got {tuple(dense_nll.shape)} and {tuple(sparse_nll.shape)}")
    n = dense_nll.numel()
    if n < 2:
        raise PlanError(f"a confidence interval needs at least 2 held-out windows, got {n}: raise --search-tokens "
                        "or lower --seq-len")
    d = (sparse_nll.double() - dense_nll.double())
    mean = d.mean().item()
    half = t_quantile((1 + confidence) / 2, n - 1) * d.std(unbiased=True).item() / math.sqrt(n)

    def pct(x: float) -> float:
        return 100.0 * math.expm1(x)

    return Interval(pct(mean), pct(mean - half), pct(mean + half), n)


class _Scored(Protocol):
    label: str
    sparsity: float
    ci: Interval | None
    ppl: float


def choose(candidates: Sequence[_Scored], budget: Budget | None = None,
           sparsity: float | None = None) -> tuple[Any, str]:
    """The candidate to keep and why: the sparsest that keeps ``budget``, or the best quality at ``sparsity``.

    With a budget and no candidate keeping it, the one with the lowest bound is returned (the caller reports
    that nothing kept it); ties go to the earlier candidate.

    Example:
        >>> best, why = choose(candidates, Budget(5.0))     # doctest: +SKIP
    """
    if not candidates:
        raise PlanError("no candidate plans to choose from")
    if budget is None:
        best = min(candidates, key=lambda c: c.ppl)
        return best, f"lowest held-out perplexity at {sparsity:.0%} model-wide sparsity"
    within = [c for c in candidates if c.ci is not None and budget.accepts(c.ci)]
    if not within:
        best = min(candidates, key=lambda c: budget.bound(c.ci) if c.ci is not None else math.inf)
        return best, f"no candidate kept +{budget.max_ppl_increase:g}%; the one closest to it"
    best = max(within, key=lambda c: c.sparsity)
    what = (f"the upper end of its {budget.confidence:.0%} interval" if budget.method == "t-windows"
            else "its point estimate")
    return best, (f"highest model-wide sparsity whose held-out perplexity increase ({what}) is within "
                  f"+{budget.max_ppl_increase:g}%")
