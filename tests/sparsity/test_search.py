"""The quality search (PPL-p%) converges on a tiny random model, deciding on the interval's upper end."""

from __future__ import annotations

import math

import pytest
import torch
from sparsity_helpers import windows

from actlab.eval.perplexity import perplexity
from actlab.sparsity.apply import masked_modules
from actlab.sparsity.calibrate import prepare
from actlab.sparsity.config import CettConfig, TealConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.search import plan_window_nll, search_quality, window_nll


@pytest.mark.parametrize("config", [TealConfig(), CettConfig()], ids=["teal", "cett"])
def test_search_finds_the_largest_knob_whose_upper_bound_is_within_budget(llama, calib, config):
    heldout = windows(llama, 4, seed=7)
    method = prepare(llama, config, calib)
    result = search_quality(llama, method, heldout, max_increase_pct=0.5, iters=12, tol=0.01)
    assert not masked_modules(llama)
    assert result.ci is not None and result.ci.hi_pct <= 0.5
    assert result.ci.lo_pct <= result.increase_pct <= result.ci.hi_pct
    assert 1 <= len(result.trace) <= 12
    for t in result.trace:
        assert t["ci_lo_pct"] <= t["ppl_increase_pct"] <= t["ci_hi_pct"] == t["bound_pct"]
    accepted = [t["knob"] for t in result.trace if t["bound_pct"] <= 0.5]
    rejected = [t["knob"] for t in result.trace if t["bound_pct"] > 0.5]
    assert result.knob == max(accepted, default=0.0)
    assert all(r > result.knob for r in rejected)
    # converged: the bracket [within budget, over budget (or the top)] is closed to the tolerance
    assert min(rejected, default=method.max_knob()) - result.knob <= 0.01 + 1e-9
    assert result.plan.extra["search"]["max_ppl_increase_pct"] == 0.5
    assert result.plan.extra["search"]["budget"] == {"max_ppl_increase": 0.5, "confidence": 0.95,
                                                     "method": "t-windows"}


def test_the_margin_costs_sparsity_the_point_estimate_does_not_pay(llama, calib):
    heldout = windows(llama, 4, seed=7)
    method = prepare(llama, TealConfig(), calib)
    bounded = search_quality(llama, method, heldout, 0.5, iters=10, tol=0.01)
    point = search_quality(llama, method, heldout, 0.5, iters=10, tol=0.01, bound="point")
    assert point.increase_pct <= 0.5 and all(t["bound_pct"] == t["ppl_increase_pct"] for t in point.trace)
    assert bounded.knob <= point.knob + 0.01
    assert bounded.ci.hi_pct > bounded.increase_pct  # the windows of a random model do differ


def test_window_nll_is_the_perplexity_per_window(llama, calib):
    w = windows(llama, 5, seed=3)
    nll = window_nll(llama, w, batch_size=2)
    assert nll.shape == (5,) and nll.dtype == torch.float64
    assert math.exp(nll.mean().item()) == pytest.approx(perplexity(llama, w).ppl, rel=1e-6)
    plan = prepare(llama, TealConfig(0.5), calib).plan()
    sparse = plan_window_nll(llama, plan, w)
    assert not masked_modules(llama) and not torch.equal(sparse, nll)


def test_a_prior_search_narrows_the_next_one(llama, calib):
    heldout = windows(llama, 4, seed=7)
    method = prepare(llama, TealConfig(), calib)
    first = search_quality(llama, method, heldout, 0.5, iters=8, tol=0.01)
    second = search_quality(llama, method, heldout, 2.0, iters=8, tol=0.01, prior=first.trace)
    assert second.knob >= first.knob and second.ci.hi_pct <= 2.0


def test_search_budget_must_be_positive_and_needs_two_windows(llama, calib):
    method = prepare(llama, TealConfig(), calib)
    with pytest.raises(PlanError, match="must be positive"):
        search_quality(llama, method, windows(llama, 2), 0.0)
    with pytest.raises(PlanError, match="at least 2 held-out windows"):
        search_quality(llama, method, windows(llama, 1), 1.0)
