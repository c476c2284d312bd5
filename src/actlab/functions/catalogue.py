"""The catalogue: the table's functions beyond the seven the models and kernels use.

Each entry has its formula, its parameters with defaults, the properties the torch-activation catalogue
gives (differentiable, monotonic, bounded, output range; checked numerically by the tests), its
family (the curves page groups by it) and an analytic derivative where one is simple. Entries register
on import of :mod:`actlab.functions`; parameterised functions' ``fn`` is the default member and their
module classes match any parameters (the module holds them), as FATReLU's does.

Not here: GLU-style gates (SwiGLU, GeGLU, ReGLU) take two inputs; in actlab they are the gated MLPs
themselves, and :func:`~actlab.functions.swap_by_name.swap_activation_` picks the function on the gate
(``silu``, ``gelu``, ``relu``...) and optionally on the up projection. ``drelu`` is that pair: ReLU on
both the gate and the up projection (Turbo Sparse), one-input ``relu`` per side; its entry says so
(``properties["where"] == "both"``).

Example:
    >>> from actlab.functions import get_function
    >>> get_function("squareplus").formula
    '(x + sqrt(x^2 + b)) / 2'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from actlab.functions import rational as _rat
from actlab.functions.modules import XIELU_DEFAULTS
from actlab.functions.modules import xielu as _xielu
from actlab.functions.table import ActivationFunction, ModuleMatch, props, register_function

INF = math.inf
_T = "torch.nn.modules.activation."
_HF = "transformers.activations."
_TABLE = "actlab.functions.modules.TableActivation"


def _ge0(x: Tensor) -> Tensor:
    return (x >= 0).to(x.dtype)


def _gt0(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


# --- ReLU family ---------------------------------------------------------------------------------------------


def _leaky(x: Tensor, negative_slope: float) -> Tensor:
    return F.leaky_relu(x, negative_slope)  # one fused pass; torch.where with a product costs ~70x more


def _d_leaky(x: Tensor, negative_slope: float) -> Tensor:
    return torch.where(x >= 0, torch.ones_like(x), torch.full_like(x, negative_slope))


def _prelu(x: Tensor, init: float) -> Tensor:
    return _leaky(x, init)


def _d_prelu(x: Tensor, init: float) -> Tensor:
    return _d_leaky(x, init)


def _rrelu(x: Tensor, lower: float, upper: float) -> Tensor:
    return _leaky(x, (lower + upper) / 2)


def _d_rrelu(x: Tensor, lower: float, upper: float) -> Tensor:
    return _d_leaky(x, (lower + upper) / 2)


def _relu6(x: Tensor) -> Tensor:
    return F.relu6(x)


def _d_relu6(x: Tensor) -> Tensor:
    return ((x > 0) & (x < 6)).to(x.dtype)


def _shifted_relu(x: Tensor, a: float) -> Tensor:
    return F.relu(x + a)


def _d_shifted_relu(x: Tensor, a: float) -> Tensor:
    return _gt0(x + a)


def _thresholded(x: Tensor, theta: float) -> Tensor:
    return torch.where(x > theta, x, torch.zeros_like(x))


def _d_thresholded(x: Tensor, theta: float) -> Tensor:
    return (x > theta).to(x.dtype)


def _elu(x: Tensor, alpha: float) -> Tensor:
    return F.elu(x, alpha)


def _d_elu(x: Tensor, alpha: float) -> Tensor:
    return torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(torch.clamp_max(x, 0)))


_SELU_L, _SELU_A = 1.0507009873554805, 1.6732632423543772


def _d_selu(x: Tensor) -> Tensor:
    return _SELU_L * torch.where(x > 0, torch.ones_like(x), _SELU_A * torch.exp(torch.clamp_max(x, 0)))


def _celu(x: Tensor, alpha: float) -> Tensor:
    return F.celu(x, alpha)


def _d_celu(x: Tensor, alpha: float) -> Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.exp(torch.clamp_max(x, 0) / alpha))


def _drelu(x: Tensor) -> Tensor:
    return F.relu(x)


# --- sigmoid-weighted ----------------------------------------------------------------------------------------


def _swish(x: Tensor, beta: float) -> Tensor:
    return x * torch.sigmoid(beta * x)


def _d_swish(x: Tensor, beta: float) -> Tensor:
    s = torch.sigmoid(beta * x)
    return s + beta * x * s * (1 - s)


def _mish(x: Tensor) -> Tensor:
    return F.mish(x)


def _d_mish(x: Tensor) -> Tensor:
    t = torch.tanh(F.softplus(x))
    return t + x * (1 - t * t) * torch.sigmoid(x)


def _serf(x: Tensor) -> Tensor:
    return x * torch.erf(F.softplus(x))


def _d_serf(x: Tensor) -> Tensor:
    sp = F.softplus(x)
    return torch.erf(sp) + x * (2 / math.sqrt(math.pi)) * torch.exp(-sp * sp) * torch.sigmoid(x)


def _logish(x: Tensor) -> Tensor:
    return x * torch.log1p(torch.sigmoid(x))


def _d_logish(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return torch.log1p(s) + x * s * (1 - s) / (1 + s)


def _smish(x: Tensor) -> Tensor:
    return x * torch.tanh(torch.log1p(torch.sigmoid(x)))


def _d_smish(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    t = torch.tanh(torch.log1p(s))
    return t + x * (1 - t * t) * s * (1 - s) / (1 + s)


def _tanhexp(x: Tensor) -> Tensor:
    return x * torch.tanh(torch.exp(x))


def _d_tanhexp(x: Tensor) -> Tensor:
    e = torch.exp(x)
    t = torch.tanh(e)
    return t + x * e * (1 - t * t)


def _gelu_10(x: Tensor) -> Tensor:
    return torch.clip(F.gelu(x), -10, 10)


def _d_gelu_10(x: Tensor) -> Tensor:
    d = 0.5 * (1 + torch.erf(x * 0.7071067811865476)) + x * torch.exp(-0.5 * x * x) * 0.3989422804014327
    return torch.where(F.gelu(x) < 10, d, torch.zeros_like(x))


def _xielu_fn(x: Tensor, alpha_p: float, alpha_n: float, beta: float, eps: float) -> Tensor:
    return _xielu(x, alpha_p, alpha_n, beta, eps)


def _d_xielu(x: Tensor, alpha_p: float, alpha_n: float, beta: float, eps: float) -> Tensor:
    neg = alpha_n * (torch.exp(torch.clamp_max(x, eps)) * (x < eps).to(x.dtype) - 1) + beta
    return torch.where(x > 0, 2 * alpha_p * x + beta, neg)


def _xielu_module(**params: float) -> torch.nn.Module:
    from actlab.functions.modules import XIELU

    return XIELU(**params)


# --- softplus-like (smooth ReLUs) ------------------------------------------------------------------------------


def _softplus(x: Tensor, beta: float, threshold: float) -> Tensor:
    return F.softplus(x, beta, threshold)


def _d_softplus(x: Tensor, beta: float, threshold: float) -> Tensor:
    return torch.where(beta * x > threshold, torch.ones_like(x), torch.sigmoid(beta * x))


def _squareplus(x: Tensor, b: float) -> Tensor:
    return 0.5 * (x + torch.sqrt(x * x + b))


def _d_squareplus(x: Tensor, b: float) -> Tensor:
    return 0.5 * (1 + x / torch.sqrt(x * x + b))


def _smelu(x: Tensor, beta: float) -> Tensor:
    mid = (x + beta) ** 2 / (4 * beta)
    return torch.where(x <= -beta, torch.zeros_like(x), torch.where(x >= beta, x, mid))


def _d_smelu(x: Tensor, beta: float) -> Tensor:
    mid = (x + beta) / (2 * beta)
    return torch.where(x <= -beta, torch.zeros_like(x), torch.where(x >= beta, torch.ones_like(x), mid))


def _sqrtsoftplus(x: Tensor) -> Tensor:
    return torch.sqrt(F.softplus(x))


def _d_sqrtsoftplus(x: Tensor) -> Tensor:
    return torch.sigmoid(x) / (2 * torch.sqrt(F.softplus(x)))


# --- bounded and classical -------------------------------------------------------------------------------------


def _d_tanh(x: Tensor) -> Tensor:
    return 1 - torch.tanh(x) ** 2


def _d_sigmoid(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _d_hardsigmoid(x: Tensor) -> Tensor:
    return ((x > -3) & (x < 3)).to(x.dtype) / 6


def _d_hardswish(x: Tensor) -> Tensor:
    return torch.where(x <= -3, torch.zeros_like(x), torch.where(x >= 3, torch.ones_like(x), (2 * x + 3) / 6))


def _hardtanh(x: Tensor, min_val: float, max_val: float) -> Tensor:
    return F.hardtanh(x, min_val, max_val)


def _d_hardtanh(x: Tensor, min_val: float, max_val: float) -> Tensor:
    return ((x > min_val) & (x < max_val)).to(x.dtype)


def _d_softsign(x: Tensor) -> Tensor:
    return 1 / (1 + x.abs()) ** 2


def _d_logsigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(-x)


def _d_tanhshrink(x: Tensor) -> Tensor:
    return torch.tanh(x) ** 2


def _softshrink(x: Tensor, lambd: float) -> Tensor:
    return F.softshrink(x, lambd)


def _d_softshrink(x: Tensor, lambd: float) -> Tensor:
    return (x.abs() > lambd).to(x.dtype)


def _hardshrink(x: Tensor, lambd: float) -> Tensor:
    return F.hardshrink(x, lambd)


def _d_hardshrink(x: Tensor, lambd: float) -> Tensor:
    return (x.abs() > lambd).to(x.dtype)


def _snake(x: Tensor, alpha: float) -> Tensor:
    return x + torch.sin(alpha * x) ** 2 / alpha


def _d_snake(x: Tensor, alpha: float) -> Tensor:
    return 1 + torch.sin(2 * alpha * x)


def _identity(x: Tensor) -> Tensor:
    return x


def _d_identity(x: Tensor) -> Tensor:
    return torch.ones_like(x)


def _bent_identity(x: Tensor) -> Tensor:
    return (torch.sqrt(x * x + 1) - 1) / 2 + x


def _d_bent_identity(x: Tensor) -> Tensor:
    return x / (2 * torch.sqrt(x * x + 1)) + 1


def _laplace(x: Tensor, mu: float, sigma: float) -> Tensor:
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


def _d_laplace(x: Tensor, mu: float, sigma: float) -> Tensor:
    return torch.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def _laplace_module(**params: float) -> torch.nn.Module:
    from actlab.functions.modules import TableActivation  # transformers' takes mu and sigma in forward only

    return TableActivation("laplace", **params)


# --- rational / learnable --------------------------------------------------------------------------------------

_PAU_DEFAULTS = {"init": "leaky_relu", "num_degree": 5, "den_degree": 4, "lo": -3.0, "hi": 3.0}


def _pau(x: Tensor, init: str, num_degree: int, den_degree: int, lo: float, hi: float) -> Tensor:
    a, b = _rat.fit_rational(init, num_degree, den_degree, lo, hi)
    return _rat.rational(x, a, b)


def _d_pau(x: Tensor, init: str, num_degree: int, den_degree: int, lo: float, hi: float) -> Tensor:
    a, b = _rat.fit_rational(init, num_degree, den_degree, lo, hi)
    return _rat.rational_grad(x, a, b)


def _pau_module(**params: Any) -> torch.nn.Module:
    return _rat.PAU(**params)


def _sau(x: Tensor, alpha: float, sigma: float) -> Tensor:
    return _rat.sau(x, alpha, sigma)


def _sau_module(**params: float) -> torch.nn.Module:
    return _rat.SAU(**params)


# --- the entries -----------------------------------------------------------------------------------------------


def _default(function: Callable[..., Tensor], params: dict[str, Any]) -> Callable[[Tensor], Tensor]:
    """The entry's ``fn``: ``function`` at the defaults, a named function (``lookup(fn)`` finds it)."""

    def fn(x: Tensor) -> Tensor:
        return function(x, **params)

    fn.__qualname__ = fn.__name__ = function.__name__.lstrip("_")
    return fn


def _entry(name: str, formula: str, family: str, properties: Any, *, fn: Callable[[Tensor], Tensor] | None = None,
           function: Callable[..., Tensor] | None = None, derivative: Callable[..., Tensor] | None = None,
           params: dict[str, Any] | None = None, modules: tuple[ModuleMatch, ...] = (),
           aliases: tuple[str, ...] = (), module_factory: Callable[..., torch.nn.Module] | None = None,
           generic: bool = True) -> ActivationFunction:
    params = params or {}
    if fn is None:
        assert function is not None
        fn = _default(function, params) if params else function
        function = function if params else None
    if generic:  # the module a model can hold for any parameters: matched by the function's name
        modules = (*modules, ModuleMatch(_TABLE, (("function", name),)))
    return ActivationFunction(name, fn, aliases=aliases, modules=modules, formula=formula,
                              properties=properties, family=family, parameters=MappingProxyType(dict(params)),
                              function=function, derivative=derivative, module_factory=module_factory)


_R = "relu"
_S = "sigmoid-weighted"
_P = "softplus-like"
_B = "bounded"
_C = "other classical"
_L = "rational / learnable"

ENTRIES: tuple[ActivationFunction, ...] = (
    _entry("leaky_relu", "x if x >= 0 else negative_slope * x", _R, props(False, True, -INF, INF, kinks=(0.0,)),
           function=_leaky, derivative=_d_leaky, params={"negative_slope": 0.01}, modules=(ModuleMatch(_T + "LeakyReLU"),)),
    _entry("prelu", "x if x >= 0 else a * x, a learnable (starts at init)", _R,
           props(False, True, -INF, INF, kinks=(0.0,), learnable=True), function=_prelu, derivative=_d_prelu,
           params={"init": 0.25}, modules=(ModuleMatch(_T + "PReLU"),), generic=False),
    _entry("rrelu", "x if x >= 0 else (lower + upper) / 2 * x (eval mode: the mean of the random slope)", _R,
           props(False, True, -INF, INF, kinks=(0.0,), mode="eval"), function=_rrelu, derivative=_d_rrelu,
           params={"lower": 1 / 8, "upper": 1 / 3}),
    _entry("relu6", "min(max(x, 0), 6)", _R, props(False, True, 0.0, 6.0, kinks=(0.0, 6.0)), fn=_relu6,
           derivative=_d_relu6, modules=(ModuleMatch(_T + "ReLU6"),)),
    _entry("shifted_relu", "max(x + a, 0)", _R, props(False, True, 0.0, INF, kinks=(0.5,)), function=_shifted_relu,
           derivative=_d_shifted_relu, params={"a": -0.5}),
    _entry("thresholded_relu", "x if x > theta else 0", _R, props(False, True, 0.0, INF, kinks=(1.0,)),
           function=_thresholded, derivative=_d_thresholded, params={"theta": 1.0}),
    _entry("drelu", "relu on the gate and on the up projection: relu(gate) * relu(up) (one side: max(x, 0))", _R,
           props(False, True, 0.0, INF, kinks=(0.0,), where="both", gated_pair=True), fn=_drelu, derivative=None),
    _entry("elu", "x if x > 0 else alpha * (exp(x) - 1)", _R, props(True, True, -1.0, INF), function=_elu,
           derivative=_d_elu, params={"alpha": 1.0}, modules=(ModuleMatch(_T + "ELU"),)),
    _entry("selu", "lambda * (x if x > 0 else alpha * (exp(x) - 1)), lambda = 1.0507, alpha = 1.6733", _R,
           props(False, True, -_SELU_L * _SELU_A, INF, kinks=(0.0,)), fn=F.selu, derivative=_d_selu,
           modules=(ModuleMatch(_T + "SELU"),)),
    _entry("celu", "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))", _R, props(True, True, -1.0, INF),
           function=_celu, derivative=_d_celu, params={"alpha": 1.0}, modules=(ModuleMatch(_T + "CELU"),)),
    _entry("swish_beta", "x * sigmoid(beta * x) (Swish-β; beta = 1 is SiLU)", _S, props(True, False, -0.2784645, INF),
           function=_swish, derivative=_d_swish, params={"beta": 1.0}),
    _entry("mish", "x * tanh(softplus(x))", _S, props(True, False, -0.3088434, INF), fn=_mish, derivative=_d_mish,
           modules=(ModuleMatch(_T + "Mish"), ModuleMatch(_HF + "MishActivation"))),
    _entry("serf", "x * erf(ln(1 + exp(x)))", _S, props(True, False, -0.3484375, INF), fn=_serf, derivative=_d_serf),
    _entry("logish", "x * ln(1 + sigmoid(x))", _S, props(True, False, -0.2527688, INF), fn=_logish,
           derivative=_d_logish),
    _entry("smish", "x * tanh(ln(1 + sigmoid(x)))", _S, props(True, False, -0.2499937, INF), fn=_smish,
           derivative=_d_smish),
    _entry("tanhexp", "x * tanh(exp(x))", _S, props(True, False, -0.3532858, INF), fn=_tanhexp, derivative=_d_tanhexp),
    _entry("gelu_10", "clip(gelu(x), -10, 10)", _S, props(False, False, -0.1699713, 10.0, kinks=(10.0,)), fn=_gelu_10,
           derivative=_d_gelu_10, modules=(ModuleMatch(_HF + "ClippedGELUActivation", (("min", -10), ("max", 10))),)),
    _entry("xielu", "alpha_p x^2 + beta x if x > 0 else alpha_n (expm1(min(x, eps)) - x) + beta x; alpha_p, alpha_n "
           "learnable; f' is beta - alpha_n on (eps, 0]", _S, props(False, False, -0.2054736, INF, kinks=(0.0,),
           learnable=True), function=_xielu_fn,
           derivative=_d_xielu, params=dict(XIELU_DEFAULTS), module_factory=_xielu_module, generic=False,
           modules=(ModuleMatch("actlab.functions.modules.XIELU"), ModuleMatch(_HF + "XIELUActivation"))),
    _entry("softplus", "ln(1 + exp(beta * x)) / beta (x where beta * x > threshold)", _P, props(True, True, 0.0, INF),
           function=_softplus, derivative=_d_softplus, params={"beta": 1.0, "threshold": 20.0},
           modules=(ModuleMatch(_T + "Softplus"),)),
    _entry("squareplus", "(x + sqrt(x^2 + b)) / 2", _P, props(True, True, 0.0, INF), function=_squareplus,
           derivative=_d_squareplus, params={"b": 4.0}),
    _entry("smelu", "0 if x <= -beta; (x + beta)^2 / (4 beta) if |x| < beta; x if x >= beta", _P,
           props(True, True, 0.0, INF), function=_smelu, derivative=_d_smelu, params={"beta": 2.0}),
    _entry("sqrtsoftplus", "sqrt(ln(1 + exp(x)))", _P, props(True, True, 0.0, INF), fn=_sqrtsoftplus,
           derivative=_d_sqrtsoftplus, modules=(ModuleMatch(_HF + "SqrtSoftplusActivation"),)),
    _entry("tanh", "tanh(x)", _B, props(True, True, -1.0, 1.0), fn=torch.tanh, derivative=_d_tanh,
           modules=(ModuleMatch(_T + "Tanh"),)),
    _entry("sigmoid", "1 / (1 + exp(-x))", _B, props(True, True, 0.0, 1.0), fn=torch.sigmoid, derivative=_d_sigmoid,
           aliases=("logistic",), modules=(ModuleMatch(_T + "Sigmoid"),)),
    _entry("hardsigmoid", "min(max(x + 3, 0), 6) / 6", _B, props(False, True, 0.0, 1.0, kinks=(-3.0, 3.0)),
           fn=F.hardsigmoid, derivative=_d_hardsigmoid, modules=(ModuleMatch(_T + "Hardsigmoid"),)),
    _entry("hardswish", "x * min(max(x + 3, 0), 6) / 6", _B, props(False, False, -0.375, INF, kinks=(-3.0, 3.0)),
           fn=F.hardswish, derivative=_d_hardswish, modules=(ModuleMatch(_T + "Hardswish"),), aliases=("hard_silu",)),
    _entry("hardtanh", "min(max(x, min_val), max_val)", _B, props(False, True, -1.0, 1.0, kinks=(-1.0, 1.0)),
           function=_hardtanh, derivative=_d_hardtanh, params={"min_val": -1.0, "max_val": 1.0},
           modules=(ModuleMatch(_T + "Hardtanh"),)),
    _entry("softsign", "x / (1 + |x|)", _B, props(True, True, -1.0, 1.0), fn=F.softsign, derivative=_d_softsign,
           modules=(ModuleMatch(_T + "Softsign"),)),
    _entry("laplace", "(1 + erf((x - mu) / (sigma sqrt 2))) / 2", _B, props(True, True, 0.0, 1.0), function=_laplace,
           derivative=_d_laplace, params={"mu": 0.707107, "sigma": 0.282095}, module_factory=_laplace_module,
           modules=(ModuleMatch(_HF + "LaplaceActivation"),)),
    _entry("logsigmoid", "ln(sigmoid(x)) = -softplus(-x)", _C, props(True, True, -INF, 0.0), fn=F.logsigmoid,
           derivative=_d_logsigmoid, modules=(ModuleMatch(_T + "LogSigmoid"),)),
    _entry("tanhshrink", "x - tanh(x)", _C, props(True, True, -INF, INF), fn=F.tanhshrink, derivative=_d_tanhshrink,
           modules=(ModuleMatch(_T + "Tanhshrink"),)),
    _entry("softshrink", "x - lambd if x > lambd; x + lambd if x < -lambd; else 0", _C,
           props(False, True, -INF, INF, kinks=(-0.5, 0.5)), function=_softshrink, derivative=_d_softshrink,
           params={"lambd": 0.5}, modules=(ModuleMatch(_T + "Softshrink"),)),
    _entry("hardshrink", "x if |x| > lambd else 0", _C, props(False, True, -INF, INF, kinks=(-0.5, 0.5)),
           function=_hardshrink, derivative=_d_hardshrink, params={"lambd": 0.5},
           modules=(ModuleMatch(_T + "Hardshrink"),)),
    _entry("snake", "x + sin^2(alpha x) / alpha", _C, props(True, True, -INF, INF), function=_snake,
           derivative=_d_snake, params={"alpha": 1.0}),
    _entry("identity", "x", _C, props(True, True, -INF, INF), fn=_identity, derivative=_d_identity,
           aliases=("linear",), modules=(ModuleMatch(_HF + "LinearActivation"), ModuleMatch("torch.nn.modules.linear.Identity"))),
    _entry("bent_identity", "(sqrt(x^2 + 1) - 1) / 2 + x", _C, props(True, True, -INF, INF), fn=_bent_identity,
           derivative=_d_bent_identity),
    _entry("pau", "P(x) / (1 + |Q(x)|), P of degree num_degree, Q = b_1 x + ... of degree den_degree, learnable; "
           "initialised to the least-squares fit of init on [lo, hi]", _L,
           props(False, False, -INF, INF, learnable=True), function=_pau, derivative=_d_pau,
           params=dict(_PAU_DEFAULTS), module_factory=_pau_module, generic=False,
           modules=(ModuleMatch("actlab.functions.rational.PAU"),)),
    _entry("sau", "alpha x + (1 - alpha) (x Phi(x / sigma) + sigma phi(x / sigma)): leaky ReLU smoothed by a "
           "Gaussian, alpha and sigma learnable", _L, props(True, True, -INF, INF, learnable=True), function=_sau,
           derivative=_rat.sau_grad, params={"alpha": 0.01, "sigma": 0.5}, module_factory=_sau_module, generic=False,
           modules=(ModuleMatch("actlab.functions.rational.SAU"),)),
)

for _e in ENTRIES:
    register_function(_e)

__all__ = ["ENTRIES"]
