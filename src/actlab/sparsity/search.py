"""Quality targets: the sparsest plan whose perplexity rises by at most ``P`` percent (PPL-P%).

The Sparsing Law's procedure: bisect the method's knob (model-wide sparsity, or the CETT target) on a
held-out calibration split, never the evaluation split, keeping the largest knob whose perplexity increase
stays within budget. The method is calibrated once (:func:`actlab.sparsity.calibrate.prepare`); each probe
only builds a plan from the calibrated state, applies it, measures and removes it.

Example:
    >>> method = prepare(model, WinaConfig(allocation="greedy"), calib)          # doctest: +SKIP
    >>> result = search_quality(model, method, heldout, max_increase_pct=1.0)   # doctest: +SKIP
    >>> result.plan.metrics["sparsity_model_wide"]                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actlab.sparsity.apply import apply_, remove_
from actlab.sparsity.errors import PlanError
from actlab.sparsity.methods.base import Method
from actlab.sparsity.plan import SparsityPlan


@dataclass
class SearchResult:
    """The chosen plan, its knob, the held-out perplexities and every probe made."""

    plan: SparsityPlan
    knob: float
    ppl_dense: float
    ppl: float
    trace: list[dict[str, float]] = field(default_factory=list)

    @property
    def increase_pct(self) -> float:
        return 100.0 * (self.ppl / self.ppl_dense - 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"knob": self.knob, "ppl_dense": self.ppl_dense, "ppl": self.ppl,
                "ppl_increase_pct": self.increase_pct, "trace": self.trace}


def _ppl(model: nn.Module, windows: torch.Tensor, batch_size: int) -> float:
    from actlab.eval.perplexity import perplexity

    return perplexity(model, windows, batch_size=batch_size).ppl


def search_quality(
    model: nn.Module,
    method: Method,
    heldout: torch.Tensor,
    max_increase_pct: float,
    *,
    iters: int = 7,
    hi: float | None = None,
    batch_size: int = 8,
    ppl_dense: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Bisect ``method``'s knob in ``[0, hi]`` for the largest value within ``max_increase_pct`` on ``heldout``.

    Args:
        method: a calibrated method (``prepare(...)``); its config's knob is searched.
        heldout: ``[n, seq_len]`` calibration windows not used to calibrate.
        iters: bisection steps (resolution ``hi / 2**iters``).
        hi: upper end of the knob (default: the method's own maximum).

    Raises:
        PlanError: a non-positive budget.
    """
    if max_increase_pct <= 0:
        raise PlanError(f"--max-ppl-increase must be positive (a percentage), got {max_increase_pct}")
    hi = method.max_knob() if hi is None else hi
    dense = _ppl(model, heldout, batch_size) if ppl_dense is None else ppl_dense
    lo = 0.0
    best = SearchResult(method.plan(0.0), 0.0, dense, dense)
    trace: list[dict[str, float]] = []
    for i in range(iters):
        mid = (lo + hi) / 2
        plan = method.plan(mid)
        apply_(model, plan)
        try:
            ppl = _ppl(model, heldout, batch_size)
        finally:
            remove_(model)
        inc = 100.0 * (ppl / dense - 1.0)
        trace.append({"knob": mid, "sparsity_model_wide": plan.metrics["sparsity_model_wide"], "ppl": ppl,
                      "ppl_increase_pct": inc})
        if inc <= max_increase_pct:
            lo, best = mid, SearchResult(plan, mid, dense, ppl)
        else:
            hi = mid
        if progress is not None:
            progress(i + 1, iters)
    best.trace = trace
    best.plan.extra["search"] = {"max_ppl_increase_pct": max_increase_pct, **best.to_json()}
    return best
