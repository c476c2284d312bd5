"""The quality search (PPL-p%) converges on a tiny random model."""

from __future__ import annotations

import pytest
from sparsity_helpers import windows

from actlab.sparsity.apply import masked_modules
from actlab.sparsity.calibrate import prepare
from actlab.sparsity.config import CettConfig, TealConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.search import search_quality


@pytest.mark.parametrize("config", [TealConfig(), CettConfig()], ids=["teal", "cett"])
def test_search_finds_the_largest_knob_within_budget(llama, calib, config):
    heldout = windows(llama, 4, seed=7)
    method = prepare(llama, config, calib)
    result = search_quality(llama, method, heldout, max_increase_pct=0.5, iters=12, tol=0.01)
    assert not masked_modules(llama)
    assert result.increase_pct <= 0.5
    assert 1 <= len(result.trace) <= 12
    accepted = [t["knob"] for t in result.trace if t["ppl_increase_pct"] <= 0.5]
    rejected = [t["knob"] for t in result.trace if t["ppl_increase_pct"] > 0.5]
    assert result.knob == max(accepted, default=0.0)
    assert all(r > result.knob for r in rejected)
    # converged: the bracket [within budget, over budget (or the top)] is closed to the tolerance
    assert min(rejected, default=method.max_knob()) - result.knob <= 0.01 + 1e-9
    assert result.plan.extra["search"]["max_ppl_increase_pct"] == 0.5


def test_search_budget_must_be_positive(llama, calib):
    with pytest.raises(PlanError, match="must be positive"):
        search_quality(llama, prepare(llama, TealConfig(), calib), windows(llama, 2), 0.0)
