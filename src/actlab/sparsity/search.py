"""Quality targets: the sparsest plan whose perplexity rises by at most ``P`` percent (PPL-P%).

The Sparsing Law's procedure: search the method's knob (model-wide sparsity, or the CETT target) on a
held-out calibration split, never the evaluation split, keeping the largest knob whose perplexity increase
stays within budget: by default the upper end of its 95 % interval over the held-out windows, so the budget keeps
on unseen text (the policy is :mod:`actlab.sparsity.select`). The bracket [largest knob within budget, smallest over it] shrinks like a bisection, but each probe is
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

from actlab.distributed import Dist
from actlab.models.scoring import per_window_nll
from actlab.sparsity.apply import apply_, remove_
from actlab.sparsity.errors import PlanError
from actlab.sparsity.methods.base import Method
from actlab.sparsity.plan import SparsityPlan
from actlab.sparsity.select import Budget, Interval, increase_interval


@dataclass
class SearchResult:
    """The chosen plan, its knob, the held-out perplexities and every probe made."""

    plan: SparsityPlan
    knob: float
    ppl_dense: float
    ppl: float
    trace: list[dict[str, float]] = field(default_factory=list)
    #: the increase's interval on the held-out windows (None with a single window)
    ci: Interval | None = None

    @property
    def increase_pct(self) -> float:
        return 100.0 * (self.ppl / self.ppl_dense - 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"knob": self.knob, "ppl_dense": self.ppl_dense, "ppl": self.ppl,
                "ppl_increase_pct": self.increase_pct,
                "heldout_ci_pct": self.ci.as_list() if self.ci is not None else None, "trace": self.trace}


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


@torch.no_grad()
def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 8, dist: Dist | None = None) -> torch.Tensor:
    """``[n_windows]`` mean next-token NLL (nats) of each window, every predicted position scored.

    The same quantity as :func:`actlab.eval.perplexity.perplexity` (``ppl = exp(mean)`` over equal-length
    windows), kept per window because the budget's interval is over windows; both are scored by
    :func:`actlab.models.scoring.per_window_nll`. ``dist``: the windows are shared out over the processes and
    every rank gets all the values (see :mod:`actlab.distributed`).

    Example:
        >>> nll = window_nll(model, heldout)          # doctest: +SKIP
        >>> math.exp(nll.mean().item())                # doctest: +SKIP  (the perplexity)
    """
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise PlanError(f"held-out windows must be [n >= 1, seq_len >= 2] token ids, got {tuple(windows.shape)}")
    return per_window_nll(model, windows, batch_size, dist=dist)


def plan_window_nll(model: nn.Module, plan: SparsityPlan, windows: torch.Tensor, batch_size: int = 8,
                    dist: Dist | None = None) -> torch.Tensor:
    """:func:`window_nll` with ``plan`` applied for the call (every token sparsified), then removed."""
    apply_(model, plan)
    try:
        return window_nll(model, windows, batch_size, dist)
    finally:
        remove_(model)


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
    dense_nll: torch.Tensor | None = None,
    confidence: float = 0.95,
    bound: str = "t-windows",
    prior: list[dict[str, float]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    dist: Dist | None = None,
) -> SearchResult:
    """The largest knob in ``[0, hi]`` whose perplexity increase on ``heldout`` keeps ``max_increase_pct``.

    "Keeps" is the selection policy's (:mod:`actlab.sparsity.select`): by default the upper end of the 95 %
    interval over held-out windows is within the budget, so the plan keeps it on new text of the same kind,
    not only on these windows; ``bound="point"`` compares the point estimate (no margin).

    Args:
        method: a calibrated method (``prepare(...)``); its config's knob is searched.
        heldout: ``[n, seq_len]`` calibration windows not used to calibrate (at least 2 for an interval).
        iters: at most this many probes.
        tol: stop once the bracket [within budget, over budget] is this narrow (in knob units).
        hi: upper end of the knob (default: the method's own maximum).
        dense_nll: the dense per-window NLL on ``heldout`` (:func:`window_nll`) when already known.
        ppl_dense: accepted for older callers; ignored (the dense run is per window now).
        confidence, bound: the budget's interval level and method (:class:`~actlab.sparsity.select.Budget`).
        prior: the ``trace`` of an earlier search with the same method, windows and budget method (e.g.
            PPL-1% before PPL-5%): its probes narrow the bracket before any new one is made.
        dist: several processes (each holding the same ``method``, e.g. from ``prepare(..., dist=d)``) score
            their share of ``heldout``; each probe sees every window, so every rank makes the same choices.

    Raises:
        PlanError: a non-positive budget, or fewer than 2 held-out windows for an interval.
    """
    budget = Budget(max_increase_pct, confidence, bound)
    if bound != "point" and heldout.shape[0] < 2:
        raise PlanError(f"the quality search needs at least 2 held-out windows for its interval, got "
                        f"{heldout.shape[0]}: raise --search-tokens or lower --seq-len")
    hi = method.max_knob() if hi is None else hi
    dense = window_nll(model, heldout, batch_size, dist) if dense_nll is None else dense_nll.double()
    ppl_dense = math.exp(dense.mean().item())
    target = math.log1p(max_increase_pct / 100.0)  # on log(1 + bound / 100)
    lo = 0.0
    best = SearchResult(method.plan(0.0), 0.0, ppl_dense, ppl_dense, ci=increase_interval(dense, dense, confidence)
                        if heldout.shape[0] >= 2 else None)
    trace: list[dict[str, float]] = []
    probes: list[tuple[float, float]] = []

    def log_bound(bound_pct: float) -> float:
        return math.log1p(max(bound_pct, -99.0) / 100.0)

    for t in prior or []:
        b = t.get("bound_pct", t["ppl_increase_pct"])
        probes.append((t["knob"], log_bound(b)))
        if b <= max_increase_pct + 1e-9 and t["knob"] > lo:
            ci = Interval(t["ppl_increase_pct"], t.get("ci_lo_pct", math.nan), t.get("ci_hi_pct", math.nan),
                          int(t.get("windows", heldout.shape[0])))
            lo, best = t["knob"], SearchResult(method.plan(t["knob"]), t["knob"], ppl_dense, t["ppl"], ci=ci)
        elif b > max_increase_pct + 1e-9:
            hi = min(hi, t["knob"])
    for i in range(iters):
        if hi - lo <= tol:
            break
        knob = _next_probe(lo, hi, probes, target)
        plan = method.plan(knob)
        sparse = plan_window_nll(model, plan, heldout, batch_size, dist)
        ppl = math.exp(sparse.mean().item())
        ci = increase_interval(dense, sparse, confidence) if heldout.shape[0] >= 2 else Interval(
            100.0 * (ppl / ppl_dense - 1.0), math.nan, math.nan, 1)
        b = budget.bound(ci)
        probes.append((knob, log_bound(b)))
        trace.append({"knob": knob, "sparsity_model_wide": plan.metrics["sparsity_model_wide"], "ppl": ppl,
                      "ppl_increase_pct": ci.point_pct, "ci_lo_pct": ci.lo_pct, "ci_hi_pct": ci.hi_pct,
                      "bound_pct": b, "windows": ci.windows})
        if budget.accepts(ci):
            lo, best = knob, SearchResult(plan, knob, ppl_dense, ppl, ci=ci)
        else:
            hi = knob
        if progress is not None:
            progress(i + 1, iters)
    best.trace = trace
    best.plan.extra["search"] = {"max_ppl_increase_pct": max_increase_pct, "budget": budget.to_dict(),
                                 **best.to_json()}
    return best
