"""The catalogue's claims checked numerically on every entry: finite on a grid, derivative against autograd
and finite differences, monotonic / bounded / range / differentiable as the properties say, modules and
parameters agree with the functions."""

import math

import pytest
import torch

from actlab.errors import user_error_types
from actlab.functions import FUNCTIONS, ActivationParameterError, get_function, lookup, lookup_module

ENTRIES = list(FUNCTIONS.values())
GRID = torch.linspace(-8, 8, 16001, dtype=torch.float64)  # step 1e-3, holds 0 and the integers


def _away_from_kinks(entry, x, margin=2e-3):
    keep = torch.ones_like(x, dtype=torch.bool)
    for k in entry.properties["kinks"]:
        keep &= (x - k).abs() > margin
    return x[keep]


def test_the_table_has_forty_functions_across_families_with_unique_names():
    assert len(ENTRIES) >= 40
    names = [n for e in ENTRIES for n in e.names]
    assert len(names) == len(set(names))
    families = {e.family for e in ENTRIES}
    assert {"relu", "sigmoid-weighted", "softplus-like", "bounded", "rational / learnable"} <= families
    for e in ENTRIES:
        assert e.family and e.formula, e.name
        assert {"differentiable", "monotonic", "bounded", "range", "kinks"} <= set(e.properties), e.name


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_finite_on_a_grid_in_both_precisions(entry):
    for dtype in (torch.float32, torch.float64):
        x = torch.linspace(-30, 30, 6001, dtype=dtype)
        y = entry.fn(x)
        assert y.dtype == dtype and y.shape == x.shape
        assert torch.isfinite(y).all()
        assert torch.isfinite(entry.grad(x)).all()


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_derivative_matches_autograd_and_finite_differences(entry):
    x = _away_from_kinks(entry, GRID)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(entry.fn(xg).sum(), xg)
    torch.testing.assert_close(entry.grad(x), auto, rtol=1e-6, atol=1e-9)
    h = 1e-6
    fd = (entry.fn(x + h) - entry.fn(x - h)) / (2 * h)
    torch.testing.assert_close(entry.grad(x), fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_monotonic_and_range_claims_hold_on_a_grid(entry):
    p = entry.properties
    x = torch.linspace(-60, 60, 120001, dtype=torch.float64)
    y = entry.fn(x)
    steps = y.diff()
    if p["monotonic"]:
        assert steps.min() >= -1e-12
    else:
        assert steps.min() < -1e-6  # somewhere it decreases
    lo, hi = p["range"]
    assert y.min() >= lo - 1e-6 and y.max() <= hi + 1e-6
    far = entry.fn(torch.tensor([-1e6, 1e6], dtype=torch.float64))
    # a finite bound is attained (or approached) on the grid; an infinite one is exceeded far out
    if math.isfinite(lo):
        assert min(y.min(), far.min()) <= lo + 1e-3
    else:
        assert far.min() < -100
    if math.isfinite(hi):
        assert max(y.max(), far.max()) >= hi - 1e-3
    else:
        assert far.max() > 100
    assert p["bounded"] == {(True, True): "both", (True, False): "below", (False, True): "above"}.get(
        (math.isfinite(lo), math.isfinite(hi)), "no")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_differentiable_claims(entry):
    p = entry.properties
    d = entry.grad(GRID)
    if p["differentiable"]:
        assert not p["kinks"]
        # f' has no jump: neighbouring grid points (1e-3 apart) differ by little
        assert d.diff().abs().max() < 0.05
    for k in p["kinks"]:  # each declared kink is one: f jumps across it, or f' does (xIELU's: at 0 itself)
        side = torch.tensor([k - 1e-4, k, k + 1e-4], dtype=torch.float64)
        f, g = entry.fn(side), entry.grad(side)
        assert (f[2] - f[0]).abs() > 1e-3 or g.max() - g.min() > 1e-3, (entry.name, k)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_module_and_parameters_compute_the_function(entry):
    x = torch.linspace(-5, 5, 201)
    m = entry.module()
    assert lookup_module(m) is entry
    torch.testing.assert_close(m(x), entry.fn(x), rtol=1e-5, atol=1e-6)
    assert lookup(entry.fn) is entry and lookup(entry.name) is entry
    other = {k: v * 1.5 if v else 0.5 for k, v in entry.parameters.items()
             if isinstance(v, float) and k not in ("lo", "hi")}
    if other:
        m = entry.module(**other)
        assert lookup_module(m) is entry
        want = entry.apply(x, **other)
        torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(want, entry.fn(x))  # the parameters change the function


def test_parameter_errors_name_the_parameters():
    with pytest.raises(ActivationParameterError, match="elu has no parameter beta \\(parameters: alpha\\)"):
        get_function("elu").apply(torch.zeros(2), beta=1.0)
    with pytest.raises(ActivationParameterError, match="alpha must be a finite number"):
        get_function("elu").module(alpha="big")
    with pytest.raises(ActivationParameterError, match="num_degree must be a whole number"):
        get_function("pau").resolve(num_degree=2.5)
    with pytest.raises(ActivationParameterError, match="has no parameter x \\(parameters: none\\)"):
        get_function("tanh").module(x=1.0)
    assert issubclass(ActivationParameterError, user_error_types())


def test_named_facts():
    x = torch.linspace(-4, 4, 81)
    torch.testing.assert_close(get_function("swish_beta").fn(x), get_function("silu").fn(x))
    torch.testing.assert_close(get_function("rrelu").fn(x), torch.nn.RReLU().eval()(x))
    assert get_function("drelu").properties["where"] == "both"
    assert get_function("hard_silu") is get_function("hardswish")
    torch.testing.assert_close(get_function("celu").apply(x, alpha=1.0), get_function("elu").fn(x))
