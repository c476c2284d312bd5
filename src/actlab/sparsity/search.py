"""Quality targets: the sparsest plan whose perplexity rises by at most ``P`` percent (PPL-P%).

The Sparsing Law's procedure: search the method's knob (model-wide sparsity, or the CETT target) on a
held-out calibration split, never the evaluation split, keeping the largest knob whose perplexity increase
stays within budget. The bracket [largest knob within budget, smallest over it] shrinks like a bisection, but each probe is
placed where a power law through the nearest probes predicts the crossing (``log(ppl / ppl_dense)`` is
smooth, monotone and close to a power of the knob), so a point of resolution takes 4-6 perplexity runs
where plain bisection needs 7-8. The method is calibrated once (:func:`actlab.sparsity.calibrate.prepare`); each probe
only builds a plan from the calibrated state, applies it, measures and removes it.

Example:
    >>> method = prepare(model, WinaConfig(allocation="greedy"), calib)          # doctest: +SKIP
    >>> result = search_quality(model, method, heldout, max_increase_pct=1.0)   # doctest: +SKIP
    >>> result.plan.metrics["sparsity_model_wide"]                               # doctest: +SKIP
"""

from __future__ import annotations

import math
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


def _next_probe(lo: float, hi: float, probes: list[tuple[float, float]], budget: float) -> float:
    """The next knob to try inside the bracket ``(lo, hi)``.

    ``log(ppl / dense)`` grows roughly like a power of the knob, so the crossing is predicted on a log-log
    line through the two probes nearest the target (with one probe, an exponent of 3); the midpoint when
    nothing usable is known. Kept 5 % of the bracket away from its ends.
    """
    usable = sorted((abs(math.log(r / budget)), k, r) for k, r in probes if k > 0 and r > 0)
    if not usable:
        x = (lo + hi) / 2
    elif len(usable) == 1:
        _, k, r = usable[0]
        x = k * (budget / r) ** (1 / 3)
    else:
        (_, k1, r1), (_, k2, r2) = usable[:2]
        if k1 == k2 or r1 == r2:
            x = (lo + hi) / 2
        else:
            slope = (math.log(r2) - math.log(r1)) / (math.log(k2) - math.log(k1))
            x = k1 * (budget / r1) ** (1 / slope) if slope > 0 else (lo + hi) / 2
    margin = 0.05 * (hi - lo)
    return min(max(x, lo + margin), hi - margin)


def _ppl(model: nn.Module, windows: torch.Tensor, batch_size: int) -> float:
    from actlab.eval.perplexity import perplexity

    return perplexity(model, windows, batch_size=batch_size).ppl


def search_quality(
    model: nn.Module,
    method: Method,
    heldout: torch.Tensor,
    max_increase_pct: float,
    *,
    iters: int = 8,
    tol: float = 0.005,
    hi: float | None = None,
    batch_size: int = 8,
    ppl_dense: float | None = None,
    prior: list[dict[str, float]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """The largest knob in ``[0, hi]`` whose perplexity on ``heldout`` rises by at most ``max_increase_pct``.

    Args:
        method: a calibrated method (``prepare(...)``); its config's knob is searched.
        heldout: ``[n, seq_len]`` calibration windows not used to calibrate.
        iters: at most this many probes.
        tol: stop once the bracket [within budget, over budget] is this narrow (in knob units).
        hi: upper end of the knob (default: the method's own maximum).
        ppl_dense: the dense perplexity on ``heldout`` when already known.
        prior: the ``trace`` of an earlier search with the same method, windows and dense perplexity (e.g.
            PPL-1% before PPL-5%): its probes narrow the bracket before any new one is made.

    Raises:
        PlanError: a non-positive budget.
    """
    if max_increase_pct <= 0:
        raise PlanError(f"--max-ppl-increase must be positive (a percentage), got {max_increase_pct}")
    hi = method.max_knob() if hi is None else hi
    dense = _ppl(model, heldout, batch_size) if ppl_dense is None else ppl_dense
    budget = math.log1p(max_increase_pct / 100.0)  # on log(ppl / dense)
    lo = 0.0
    best = SearchResult(method.plan(0.0), 0.0, dense, dense)
    trace: list[dict[str, float]] = []
    probes: list[tuple[float, float]] = []
    for t in prior or []:
        r = math.log(t["ppl"] / dense)
        probes.append((t["knob"], r))
        if r <= budget and t["knob"] > lo:
            lo, best = t["knob"], SearchResult(method.plan(t["knob"]), t["knob"], dense, t["ppl"])
        elif r > budget:
            hi = min(hi, t["knob"])
    for i in range(iters):
        if hi - lo <= tol:
            break
        knob = _next_probe(lo, hi, probes, budget)
        plan = method.plan(knob)
        apply_(model, plan)
        try:
            ppl = _ppl(model, heldout, batch_size)
        finally:
            remove_(model)
        probes.append((knob, math.log(ppl / dense)))
        trace.append({"knob": knob, "sparsity_model_wide": plan.metrics["sparsity_model_wide"], "ppl": ppl,
                      "ppl_increase_pct": 100.0 * (ppl / dense - 1.0)})
        if math.log(ppl / dense) <= budget:
            lo, best = knob, SearchResult(plan, knob, dense, ppl)
        else:
            hi = knob
        if progress is not None:
            progress(i + 1, iters)
    best.trace = trace
    best.plan.extra["search"] = {"max_ppl_increase_pct": max_increase_pct, **best.to_json()}
    return best
