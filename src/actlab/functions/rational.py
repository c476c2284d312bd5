"""Learnable rational activations: the safe Padé Activation Unit (PAU) and the Smooth Activation Unit (SAU).

**PAU** (Molina, Schramowski & Kersting, ICLR 2020), in its "safe" form, the one that cannot have a pole::

    F(x) = P(x) / (1 + |Q(x)|),   P(x) = a_0 + a_1 x + ... + a_m x^m,   Q(x) = b_1 x + ... + b_n x^n

with learnable ``a`` and ``b`` (degrees 5 and 4 by default, as the paper). The coefficients start as a
least-squares fit of a named function of the table (leaky ReLU by default, as the paper; any entry works,
e.g. ``gelu``) on ``[lo, hi]``: first the linearised problem ``P(x_i) - f_i Q(x_i) = f_i`` (linear in
``a, b``), then L-BFGS on the squared error of ``F`` itself.

**SAU** (Biswas et al. 2021, "SAU: smooth activation function using convolution with approximate
identities"): leaky ReLU convolved with a Gaussian of width ``sigma``, in closed form::

    SAU(x) = alpha x + (1 - alpha) (x Φ(x / sigma) + sigma φ(x / sigma))

with ``alpha`` and ``sigma`` learnable; as ``sigma -> 0`` it is leaky ReLU.

Both are ``nn.Module`` s whose coefficients are parameters: an activation swap with them saves and loads
them with the model (``actlab.functions.swap_by_name``).

Example:
    >>> pau = PAU("gelu")
    >>> x = torch.linspace(-3, 3, 101)
    >>> bool((pau(x) - torch.nn.functional.gelu(x)).abs().max() < 1e-2)
    True
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor, nn

from actlab.errors import ActlabError


class RationalError(ActlabError):
    """A rational activation asked with degrees, a range or an initial function it cannot take."""


def rational(x: Tensor, numerator: Tensor, denominator: Tensor) -> Tensor:
    """The safe Padé form ``P(x) / (1 + |Q(x)|)``; ``numerator = [a_0..a_m]``, ``denominator = [b_1..b_n]``.

    Example:
        >>> rational(torch.tensor([2.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0])).tolist()  # x / (1+|x|)
        [0.6666666865348816]
    """
    a = numerator.to(x.dtype)
    b = denominator.to(x.dtype)
    p = torch.zeros_like(x) + a[-1]
    for c in a.flip(0)[1:]:  # Horner
        p = p * x + c
    q = torch.zeros_like(x) + b[-1]
    for c in b.flip(0)[1:]:
        q = q * x + c
    q = q * x  # Q has no constant term
    return p / (1 + q.abs())


def rational_grad(x: Tensor, numerator: Tensor, denominator: Tensor) -> Tensor:
    """d/dx of :func:`rational` (the sign of ``Q`` where it is 0 taken as 0)."""
    a = numerator.to(x.dtype)
    b = denominator.to(x.dtype)
    p = sum(c * x**i for i, c in enumerate(a))
    dp = sum(i * c * x ** (i - 1) for i, c in enumerate(a) if i)
    q = sum(c * x ** (k + 1) for k, c in enumerate(b))
    dq = sum((k + 1) * c * x**k for k, c in enumerate(b))
    den = 1 + q.abs()
    return dp / den - p * torch.sign(q) * dq / den**2


@lru_cache(maxsize=64)
def _fit(init: str, num_degree: int, den_degree: int, lo: float, hi: float) -> tuple[tuple[float, ...], ...]:
    from actlab.functions.table import get_function

    entry = get_function(init)
    x = torch.linspace(lo, hi, 1001, dtype=torch.float64)
    with torch.no_grad():
        f = entry.fn(x)
    # linearised: P(x) - f Q(x) = f, linear in (a, b): one least-squares solve
    design = torch.cat([torch.stack([x**i for i in range(num_degree + 1)], 1),
                        torch.stack([-f * x ** (k + 1) for k in range(den_degree)], 1)], 1)
    sol = torch.linalg.lstsq(design, f.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    a = sol[: num_degree + 1].clone().requires_grad_(True)
    b = sol[num_degree + 1:].clone().requires_grad_(True)
    # then the safe form itself (|Q| changes the fit where Q < 0)
    opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=300, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.mean((rational(x, a, b) - f) ** 2)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return tuple(a.detach().tolist()), tuple(b.detach().tolist())


def fit_rational(init: str = "leaky_relu", num_degree: int = 5, den_degree: int = 4, lo: float = -3.0,
                 hi: float = 3.0) -> tuple[Tensor, Tensor]:
    """Coefficients ``(a, b)`` (float64) of the safe PAU closest to the table's function ``init`` on
    ``[lo, hi]`` in least squares (cached: the same arguments fit once per process).

    Raises:
        RationalError: degrees below 1, an empty range, or a name the table does not know.

    Example:
        >>> a, b = fit_rational("gelu")
        >>> a.shape, b.shape
        (torch.Size([6]), torch.Size([4]))
    """
    from actlab.functions.table import UnknownActivationError, get_function

    if int(num_degree) != num_degree or int(den_degree) != den_degree or num_degree < 1 or den_degree < 1:
        raise RationalError(f"PAU degrees must be whole numbers >= 1, got {num_degree} and {den_degree}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise RationalError(f"PAU fit range must be finite with lo < hi, got [{lo}, {hi}]")
    try:
        name = get_function(init).name
    except UnknownActivationError as e:
        raise RationalError(f"PAU init: {e}") from e
    if name in ("pau", "sau"):
        raise RationalError(f"PAU init must be a fixed function of the table, not {name}")
    a, b = _fit(name, int(num_degree), int(den_degree), float(lo), float(hi))
    return torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)


class PAU(nn.Module):
    """Safe Padé Activation Unit with learnable coefficients, initialised to approximate ``init``.

    Args:
        init: a function of the table to approximate at initialisation (``leaky_relu``, ``gelu``...).
        num_degree: degree ``m`` of ``P``.
        den_degree: degree ``n`` of ``Q``.
        lo: start of the fit range.
        hi: end of the fit range.

    Example:
        >>> pau = PAU()                      # leaky ReLU (slope 0.01) on [-3, 3]
        >>> [n for n, _ in pau.named_parameters()]
        ['numerator', 'denominator']
    """

    def __init__(self, init: str = "leaky_relu", num_degree: int = 5, den_degree: int = 4, lo: float = -3.0,
                 hi: float = 3.0) -> None:
        super().__init__()
        a, b = fit_rational(init, num_degree, den_degree, lo, hi)
        self.numerator = nn.Parameter(a.float())
        self.denominator = nn.Parameter(b.float())
        self.init = init
        self.fit_range = (float(lo), float(hi))

    def forward(self, x: Tensor) -> Tensor:
        return rational(x, self.numerator, self.denominator)

    def extra_repr(self) -> str:
        return f"init={self.init!r}, num_degree={len(self.numerator) - 1}, den_degree={len(self.denominator)}"


_SQRT_2PI = math.sqrt(2 * math.pi)


def sau(x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """Leaky ReLU (slope ``alpha``) convolved with N(0, sigma²), closed form.

    Example:
        >>> round(sau(torch.tensor([3.0]), 0.0, 1e-3).item(), 4)
        3.0
    """
    z = x / sigma
    cdf = 0.5 * (1 + torch.erf(z * 0.7071067811865476))
    pdf = torch.exp(-0.5 * z * z) / _SQRT_2PI
    return alpha * x + (1 - alpha) * (x * cdf + sigma * pdf)


def sau_grad(x: Tensor, alpha: float, sigma: float) -> Tensor:
    """d/dx of :func:`sau`: ``alpha + (1 - alpha) Φ(x / sigma)``."""
    return alpha + (1 - alpha) * 0.5 * (1 + torch.erf(x / sigma * 0.7071067811865476))


class SAU(nn.Module):
    """Smooth Activation Unit with learnable ``alpha`` (negative slope) and ``sigma`` (smoothing width).

    Example:
        >>> SAU()(torch.tensor([0.0])).item() > 0      # smooth at 0: sigma φ(0) (1 - alpha)
        True
    """

    def __init__(self, alpha: float = 0.01, sigma: float = 0.5) -> None:
        super().__init__()
        if not sigma > 0:
            raise RationalError(f"SAU sigma must be > 0, got {sigma}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.sigma = nn.Parameter(torch.tensor(float(sigma)))

    def forward(self, x: Tensor) -> Tensor:
        # a trained sigma must stay positive: below 1e-4 it is leaky ReLU to float precision anyway
        return sau(x, self.alpha.to(x.dtype), self.sigma.abs().clamp_min(1e-4).to(x.dtype))


__all__ = ["PAU", "SAU", "RationalError", "fit_rational", "rational", "rational_grad", "sau", "sau_grad"]
