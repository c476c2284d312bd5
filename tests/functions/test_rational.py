"""Rational (PAU) and smooth (SAU) learnable activations: the least-squares init approximates its target
within the stated tolerance, the coefficients are parameters gradients reach, training moves them."""

import pytest
import torch
import torch.nn.functional as F

from actlab.errors import user_error_types
from actlab.functions import PAU, SAU, get_function
from actlab.functions.rational import RationalError, fit_rational, rational, rational_grad, sau

X = torch.linspace(-3, 3, 1201)

#: max |PAU - target| on the fit range [-3, 3] after init, degrees 5/4: the kinks of (leaky) ReLU are what
#: a rational of this degree rounds off (0.034 measured); smooth targets are matched closely
TOLERANCE = {"leaky_relu": 0.04, "relu": 0.04, "gelu": 2e-3, "silu": 1e-3, "tanh": 1e-3}


@pytest.mark.parametrize(("init", "tol"), TOLERANCE.items())
def test_init_approximates_the_named_function(init, tol):
    pau = PAU(init)
    with torch.no_grad():
        err = (pau(X) - get_function(init).fn(X)).abs().max().item()
    assert err < tol
    assert err > 0  # an approximation, not the function itself


def test_the_default_is_leaky_relu_and_the_table_entry_is_the_default_module():
    with torch.no_grad():
        torch.testing.assert_close(PAU()(X), get_function("pau").fn(X))
        assert (PAU()(X) - F.leaky_relu(X, 0.01)).abs().max() < TOLERANCE["leaky_relu"]


def test_safe_denominator_has_no_pole():
    a = torch.tensor([0.0, 1.0, 0.5])
    b = torch.tensor([-2.0, 1.0])  # Q = -2x + x^2 crosses 0: a plain P/Q would have poles at 0 and 2
    y = rational(torch.linspace(-10, 10, 20001), a, b)
    assert torch.isfinite(y).all() and y.abs().max() < 10
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    x = x[(x.abs() > 1e-2) & ((x - 2).abs() > 1e-2)]  # away from the corners of |Q|
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(rational(xg, a.double(), b.double()).sum(), xg)
    torch.testing.assert_close(rational_grad(x, a.double(), b.double()), auto)


@pytest.mark.parametrize("module", [PAU(), PAU("gelu", 3, 2), SAU()], ids=["pau", "pau-3-2", "sau"])
def test_gradients_reach_every_coefficient_and_training_moves_them(module):
    params = dict(module.named_parameters())
    assert params
    before = {k: v.detach().clone() for k, v in params.items()}
    target = sau(X, 0.3, 0.3)  # another function (reachable by both): the coefficients must move to approach it
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(module(X), target)
        loss.backward()
        for k, p in params.items():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, k
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(not torch.equal(before[k], p.detach()) for k, p in params.items())


def test_sau_is_smoothed_leaky_relu():
    torch.testing.assert_close(SAU(0.01, 1e-3)(X), F.leaky_relu(X, 0.01), atol=1e-3, rtol=0)
    wide = SAU(0.01, 1.0)(X)
    assert (wide > F.leaky_relu(X, 0.01)).all()  # convex: the smoothing lies above


def test_fit_is_cached_and_bad_arguments_are_user_errors():
    assert fit_rational("gelu")[0].tolist() == fit_rational("gelu")[0].tolist()
    with pytest.raises(RationalError, match="degrees must be whole numbers >= 1"):
        PAU(num_degree=0)
    with pytest.raises(RationalError, match="lo < hi"):
        PAU(lo=1.0, hi=-1.0)
    with pytest.raises(RationalError, match="unknown activation 'nope'"):
        PAU("nope")
    with pytest.raises(RationalError, match="fixed function"):
        PAU("pau")
    with pytest.raises(RationalError, match="sigma must be > 0"):
        SAU(sigma=0.0)
    assert issubclass(RationalError, user_error_types())
