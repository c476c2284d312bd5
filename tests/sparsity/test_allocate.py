"""Allocation: the greedy path, the global allocation and the damage curves."""

from __future__ import annotations

import pytest
import torch

from actlab.sparsity.allocate import GreedyPath, damage_curve, global_allocation
from actlab.sparsity.calibrate import prepare
from actlab.sparsity.config import TealConfig, WinaConfig
from actlab.sparsity.scores import GRID, QuantileTable


@pytest.fixture(scope="module")
def greedy(llama, calib):
    return prepare(llama, TealConfig(0.5, allocation="greedy", greedy_tokens=64, greedy_step=0.1), calib)


def test_greedy_path_is_monotone(greedy):
    assert sorted(greedy.path.steps) == [0, 1]
    for steps in greedy.path.steps.values():
        blocks = [s for s, _ in steps]
        assert blocks[0] == 0.0 and blocks[-1] >= 0.85
        assert all(b2 > b1 for b1, b2 in zip(blocks, blocks[1:], strict=False))
        for (_, a), (_, b) in zip(steps, steps[1:], strict=False):
            assert all(b[g] >= a[g] for g in a)  # no projection ever gets denser
            assert sum(b[g] > a[g] for g in a) == 1  # one projection raised per step


def test_greedy_splits_shared_inputs(greedy):
    names = {g.name for g in greedy.groups if g.layer == 0}
    assert {"layers.0.attn.qkv_in:q_proj", "layers.0.attn.qkv_in:k_proj", "layers.0.mlp.gate_up_in:up_proj"} <= names


def test_greedy_levels_reach_any_block_sparsity(greedy):
    for target in (0.15, 0.42, 0.6):
        plan = greedy.plan(target)
        assert plan.metrics["sparsity_model_wide"] == pytest.approx(target, abs=0.02)


def test_levels_at_interpolates_between_steps():
    path = GreedyPath({0: [(0.0, {"a": 0.0, "b": 0.0}), (0.2, {"a": 0.4, "b": 0.0}), (0.4, {"a": 0.4, "b": 0.4})]})
    assert path.levels_at(0.1) == pytest.approx({"a": 0.2, "b": 0.0})
    assert path.levels_at(0.3) == pytest.approx({"a": 0.4, "b": 0.2})
    assert path.levels_at(0.9) == {"a": 0.4, "b": 0.4}
    assert GreedyPath.from_json(path.to_json()).steps == path.steps


def test_damage_curve_is_the_cumulative_cost_in_masking_order():
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    scores = x.abs()
    curve = damage_curve(x, scores, torch.tensor([1.0, 10.0]))
    assert curve[0] == 0.0
    # masking order: 0.5 (cost 2.5), 1 (1), 2 (40), 3 (9); per row: / 2
    assert curve[GRID // 4] == pytest.approx(2.5 / 2)
    assert curve[GRID] == pytest.approx((2.5 + 1 + 40 + 9) / 2)
    assert bool((curve[1:] >= curve[:-1]).all())


def test_global_allocation_prefers_cheap_groups_and_meets_the_target():
    levels = torch.linspace(0, 1, GRID + 1)
    curves = {"cheap": levels**2, "dear": 10 * levels**2}
    out = global_allocation(curves, {"cheap": 100, "dear": 100}, target=0.5)
    assert out["cheap"] + out["dear"] == pytest.approx(1.0, abs=1e-6)
    # equal marginal cost: 2 l_c = 20 l_d  ->  l_c = 10 l_d
    assert out["cheap"] == pytest.approx(10 / 11, abs=0.01)


def test_global_method_meets_targets_and_spends_more_on_tolerant_groups(llama, calib):
    method = prepare(llama, WinaConfig(allocation="global", fisher_tokens=64), calib)
    for target in (0.2, 0.5):
        assert method.plan(target).metrics["sparsity_model_wide"] == pytest.approx(target, abs=0.02)
    levels = method.levels(0.5)
    assert len(set(round(v, 3) for v in levels.values())) > 1  # not uniform


def test_quantile_table_thresholds():
    table = QuantileTable.from_scores(torch.arange(1, 1001, dtype=torch.float32))
    assert table.threshold(0.0) == 0.0
    assert table.threshold(0.5) == pytest.approx(500.5, abs=1)
    assert table.threshold(1.0) == pytest.approx(1000)
