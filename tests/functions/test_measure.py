"""Measured properties: sparsity at standard-normal input against closed forms; the cost is a finite positive
number (never timed against anything in a test) and leaves torch's thread count as it was."""

import math

import pytest
import torch

from actlab.functions.measure import cost_per_element, measure_all, sparsity_at_normal


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize(("name", "params", "zeros"), [
    ("relu", {}, 0.5), ("relu2", {}, 0.5), ("fatrelu", {"threshold": 0.5}, _phi(0.5)),
    ("shifted_relu", {}, _phi(0.5)), ("hardshrink", {}, _phi(0.5) - _phi(-0.5)),
    ("softshrink", {"lambd": 1.0}, _phi(1) - _phi(-1)), ("silu", {}, 0.0), ("tanh", {}, 0.0),
])
def test_exact_zeros_match_the_normal_cdf(name, params, zeros):
    got = sparsity_at_normal(name, n=400_000, **params)
    assert abs(got["zeros"] - zeros) < 4e-3
    assert got["near_zero"] >= got["zeros"]


def test_near_zero_share_is_relative_to_the_outputs_std():
    got = sparsity_at_normal("identity", n=400_000)
    assert abs(got["std"] - 1) < 1e-2
    assert abs(got["near_zero"] - (_phi(0.01) - _phi(-0.01))) < 2e-3
    assert sparsity_at_normal("silu", n=100_000, rel=0.5)["near_zero"] > 0.2


def test_cost_is_positive_finite_and_restores_threads():
    threads = torch.get_num_threads()
    ns = cost_per_element("gelu", n=1 << 14, reps=3, warmup=1)
    assert math.isfinite(ns) and ns > 0
    assert torch.get_num_threads() == threads


def test_measure_all_covers_the_table():
    from actlab.functions import FUNCTIONS

    table = measure_all(cost=False, n=20_000)
    assert set(table) == set(FUNCTIONS)
    assert table["relu"]["zeros"] > 0.45 and table["gelu"]["zeros"] == 0.0
