"""The selection policy: the interval over paired windows, the budget's check and the choice of candidate."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch

from actlab.sparsity.errors import PlanError
from actlab.sparsity.select import Budget, Interval, choose, increase_interval, t_quantile


@pytest.mark.parametrize("p,df,want", [(0.975, 1, 12.7062), (0.975, 7, 2.3646), (0.95, 15, 1.7531),
                                       (0.975, 30, 2.0423), (0.995, 3, 5.8409)])
def test_t_quantiles_match_the_tables(p, df, want):
    assert t_quantile(p, df) == pytest.approx(want, abs=2e-4)


def test_interval_is_the_paired_t_interval_in_percent():
    dense = torch.tensor([3.0, 3.4, 2.8, 3.1, 3.3])
    diff = torch.tensor([0.02, 0.05, 0.01, 0.04, 0.03])
    ci = increase_interval(dense, dense + diff)
    half = t_quantile(0.975, 4) * diff.double().std().item() / math.sqrt(5)
    assert ci.point_pct == pytest.approx(100 * math.expm1(0.03))
    assert ci.as_list() == pytest.approx([100 * math.expm1(0.03 - half), 100 * math.expm1(0.03 + half)])
    assert ci.windows == 5
    # the point is the perplexity ratio itself: equal-length windows, mean NLL per window
    assert ci.point_pct == pytest.approx(100 * (math.exp((dense + diff).mean()) / math.exp(dense.mean()) - 1))


def test_interval_covers_the_mean_about_as_often_as_it_says():
    rng = random.Random(0)
    hits, trials = 0, 400
    for _ in range(trials):
        d = torch.tensor([rng.gauss(0.02, 0.03) for _ in range(8)], dtype=torch.float64)
        ci = increase_interval(torch.zeros(8, dtype=torch.float64), d)
        hits += ci.lo_pct <= 100 * math.expm1(0.02) <= ci.hi_pct
    assert 0.91 <= hits / trials <= 0.99


def test_interval_refuses_unpaired_or_single_windows():
    with pytest.raises(PlanError, match="pair up"):
        increase_interval(torch.zeros(3), torch.zeros(4))
    with pytest.raises(PlanError, match="at least 2"):
        increase_interval(torch.zeros(1), torch.zeros(1))


def test_budget_checks_the_upper_end_or_the_point():
    ci = Interval(point_pct=4.0, lo_pct=2.0, hi_pct=6.0, windows=8)
    assert not Budget(5.0).accepts(ci) and Budget(6.0).accepts(ci)
    assert Budget(5.0, method="point").accepts(ci)
    for bad in (dict(max_ppl_increase=0.0), dict(max_ppl_increase=float("nan")),
                dict(max_ppl_increase=5.0, confidence=1.0), dict(max_ppl_increase=5.0, method="hope")):
        with pytest.raises(PlanError):
            Budget(**bad)


@dataclass
class C:
    label: str
    sparsity: float
    ci: Interval | None
    ppl: float = 10.0


def test_choose_the_sparsest_whose_bound_keeps_the_budget():
    cands = [C("a", 0.30, Interval(2.0, 1.0, 3.0, 8)), C("b", 0.40, Interval(4.5, 3.0, 6.0, 8)),
             C("c", 0.35, Interval(4.0, 3.0, 4.9, 8))]
    best, why = choose(cands, Budget(5.0))
    assert best.label == "c" and "upper end of its 95% interval" in why
    assert choose(cands, Budget(5.0, method="point"))[0].label == "b"
    none_fit, why = choose(cands, Budget(0.5))
    assert none_fit.label == "a" and "no candidate kept" in why
    assert choose([C("x", 0.5, None, 12.0), C("y", 0.5, None, 11.0)], None, 0.5)[0].label == "y"
