"""The activation-function table: one entry per function, owning its names, modules and kernel id.

Every part of actlab that needs to know "which activation is this" asks this table: the adapters (the
name in a model's config), the kernels' reference path (the torch function), the C kernels (the id of
the ``actlab_act`` enum in ``kernels/csrc/sparse_gemv.h``) and the kernel swap (the module a model
*actually* runs, looked up by its class). Functions that compute the same thing up to rounding (the
tanh approximations of GELU: ``gelu_pytorch_tanh``, ``gelu_new``, ``gelu_fast``...) are one entry with
several aliases.

Example:
    >>> from actlab.functions import get_function, lookup_module
    >>> get_function("swish").name
    'silu'
    >>> lookup_module(torch.nn.ReLU()).kernel_id
    2
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actlab.errors import ActlabError

__all__ = [
    "FUNCTIONS",
    "ActivationParameterError",
    "FATReLU",
    "ActivationFunction",
    "ModuleMatch",
    "UnknownActivationError",
    "get_function",
    "kernel_functions",
    "lookup",
    "lookup_module",
    "register_function",
]


class UnknownActivationError(ActlabError):
    """An activation name, module or function that is not in the table."""


class ActivationParameterError(ActlabError):
    """A parameter an activation function does not have, or a value it cannot take."""


@dataclass(frozen=True)
class ModuleMatch:
    """A module class that implements a function, optionally only for some attribute values.

    Classes are named by their import path (``"torch.nn.modules.activation.GELU"``), not imported, so the
    table does not import transformers. Only the exact class matches: a subclass may override ``forward``.

    Attributes:
        cls: ``f"{type(m).__module__}.{type(m).__qualname__}"`` of matching modules.
        attrs: ``(attribute, value)`` pairs the module must have, e.g. ``(("approximate", "tanh"),)``.
    """

    cls: str
    attrs: tuple[tuple[str, Any], ...] = ()

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is exactly this class with these attribute values."""
        t = type(module)
        if f"{t.__module__}.{t.__qualname__}" != self.cls:
            return False
        missing = object()
        return all(getattr(module, k, missing) == v for k, v in self.attrs)


def _coerce(name: str, key: str, default: Any, value: Any) -> Any:
    """``value`` as the kind of the default: a name (str), a whole number (int) or a finite number (float)."""
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        kind = "a name"
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if not isinstance(default, int) or isinstance(default, bool):
            return float(value)
        if float(value).is_integer():
            return int(value)
        kind = "a whole number"
    else:
        kind = "a finite number"
    raise ActivationParameterError(f"{name}: parameter {key} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class ActivationFunction:
    """One activation function and everything actlab knows about it.

    Attributes:
        name: canonical name (lower case), e.g. ``"silu"``.
        fn: the torch function ``Tensor -> Tensor`` (the semantics the kernels must match).
        aliases: other names, as they appear in Hugging Face configs (``hidden_act``...).
        modules: the module classes (torch, transformers) that compute it.
        kernel_id: value of the C enum ``actlab_act`` when the fused kernels support it, else ``None``.
        formula: the definition, for reports and docs.
        properties: facts about the function as the torch-activation catalogue lists them, checked on a grid
            by the tests: ``differentiable`` (everywhere), ``monotonic`` (non-decreasing), ``range`` (the
            closure of the output range, ``(lo, hi)`` with ``±inf``), ``kinks`` (where it is not
            differentiable), ``learnable``; plus open-ended ones (``parameters`` of FATReLU...).
        family: the group it belongs to on the curves page (``relu``, ``sigmoid-weighted``, ``bounded``...).
        parameters: the parameters with their defaults (numbers; names for a PAU's ``init``); ``fn`` is
            the function at the defaults.
        function: ``function(x, **parameters)``, the parameterised form (``None``: ``fn`` takes none).
        derivative: ``derivative(x, **parameters)``, analytic; ``None``: :meth:`grad` uses autograd.
        module_factory: ``module_factory(**parameters)`` builds the module a swap puts in a model (``None``:
            the first module class, built from its attributes).
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    aliases: tuple[str, ...] = ()
    modules: tuple[ModuleMatch, ...] = ()
    kernel_id: int | None = None
    formula: str = ""
    properties: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    family: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    function: Callable[..., Tensor] | None = None
    derivative: Callable[..., Tensor] | None = None
    module_factory: Callable[..., nn.Module] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name followed by the aliases."""
        return (self.name, *self.aliases)

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def resolve(self, **params: float) -> dict[str, float]:
        """The parameters with defaults filled in.

        Raises:
            ActivationParameterError: a parameter the function does not have, or one that is not a number.

        Example:
            >>> get_function("fatrelu").resolve(threshold=0.1)
            {'threshold': 0.1}
        """
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            have = ", ".join(self.parameters) or "none"
            raise ActivationParameterError(f"{self.name} has no parameter {', '.join(unknown)} (parameters: {have})")
        out = dict(self.parameters)
        for k, v in params.items():
            out[k] = _coerce(self.name, k, self.parameters[k], v)
        return out

    def apply(self, x: Tensor, **params: float) -> Tensor:
        """The function at ``params`` (defaults for the rest).

        Example:
            >>> get_function("fatrelu").apply(torch.tensor([0.05, 0.2]), threshold=0.1).tolist()
            [0.0, 0.20000000298023224]
        """
        if self.function is None:
            self.resolve(**params)
            return self.fn(x)
        return self.function(x, **self.resolve(**params))

    def grad(self, x: Tensor, **params: float) -> Tensor:
        """f'(x) elementwise: the analytic derivative where the entry has one, else autograd's.

        Example:
            >>> get_function("relu").grad(torch.tensor([-1.0, 2.0])).tolist()
            [0.0, 1.0]
        """
        if self.derivative is not None:
            return self.derivative(x, **self.resolve(**params))
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.apply(xg, **params).sum(), xg)
        return g

    def module(self, **params: float) -> nn.Module:
        """A fresh module computing the function at ``params`` (what a swap puts in a model).

        Example:
            >>> get_function("relu").module()
            ReLU()
        """
        resolved = self.resolve(**params)
        if self.module_factory is not None:
            return self.module_factory(**resolved)
        match = self.modules[0]
        module_path, _, cls_name = match.cls.rpartition(".")
        extra = {k: v for k, v in resolved.items() if k not in dict(match.attrs)}
        return getattr(importlib.import_module(module_path), cls_name)(**dict(match.attrs), **extra)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _relu2(x: Tensor) -> Tensor:
    return torch.square(F.relu(x))


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


_SQRT_2_PI = 0.7978845608028654  # sqrt(2 / pi)


def _d_silu(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _d_gelu_tanh(x: Tensor) -> Tensor:
    t = torch.tanh(_SQRT_2_PI * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_PI * (1 + 3 * 0.044715 * x * x)


def _d_relu(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def _d_gelu(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x * 0.7071067811865476)) + x * torch.exp(-0.5 * x * x) * 0.3989422804014327


def _d_relu2(x: Tensor) -> Tensor:
    return 2 * F.relu(x)


def _d_quick_gelu(x: Tensor) -> Tensor:
    s = torch.sigmoid(1.702 * x)
    return s * (1 + 1.702 * x * (1 - s))


def props(differentiable: bool, monotonic: bool, lo: float, hi: float, kinks: tuple[float, ...] = (),
          **extra: Any) -> Mapping[str, Any]:
    """The properties mapping of an entry: the catalogue's facts (``bounded`` follows from the range).

    Example:
        >>> props(False, True, 0.0, float("inf"), kinks=(0.0,))["bounded"]
        'below'
    """
    inf = float("inf")
    bounded = {(True, True): "both", (True, False): "below", (False, True): "above"}.get((lo > -inf, hi < inf), "no")
    return MappingProxyType({"differentiable": differentiable, "monotonic": monotonic, "bounded": bounded,
                             "range": (lo, hi), "kinks": kinks, **extra})


class FATReLU(nn.Module):
    """FATReLU (ProSparse): keep ``x`` only where ``x >= threshold``, else 0; ``threshold = 0`` is ReLU.

    A parameterised function: the table's ``fn`` for it is the ``threshold = 0`` case; what a model runs is
    this module, whose ``threshold`` the activation swap (``actlab.functions.swaps``) records in the config.

    Example:
        >>> FATReLU(0.5)(torch.tensor([-1.0, 0.2, 0.5, 2.0])).tolist()
        [0.0, 0.0, 0.5, 2.0]
    """

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        self.threshold = float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        return x * (x >= self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


def _fatrelu(x: Tensor) -> Tensor:
    return x * (x >= 0).to(x.dtype)


def _fatrelu_at(x: Tensor, threshold: float) -> Tensor:
    return x * (x >= threshold).to(x.dtype)


def _d_fatrelu(x: Tensor, threshold: float) -> Tensor:
    return (x >= threshold).to(x.dtype)


_TORCH = "torch.nn.modules.activation."
_HF = "transformers.activations."

#: The table, keyed by canonical name. Extend it with :func:`register_function`.
FUNCTIONS: dict[str, ActivationFunction] = {}


def register_function(entry: ActivationFunction) -> ActivationFunction:
    """Add ``entry`` to the table; its names must not be taken already.

    Raises:
        ValueError: a name or alias of ``entry`` already names another entry, or its kernel id is taken.

    Example:
        >>> register_function(ActivationFunction("softsign", F.softsign, modules=(ModuleMatch(
        ...     "torch.nn.modules.activation.Softsign"),)))               # doctest: +SKIP
    """
    taken = {n: e.name for e in FUNCTIONS.values() for n in e.names}
    clash = [n for n in entry.names if n.lower() in taken]
    if clash or any(n != n.lower() for n in entry.names):
        raise ValueError(f"activation names must be new and lower case: {clash or list(entry.names)}")
    if entry.kernel_id is not None and any(e.kernel_id == entry.kernel_id for e in FUNCTIONS.values()):
        raise ValueError(f"kernel id {entry.kernel_id} is already taken")
    FUNCTIONS[entry.name] = entry
    return entry


for _entry in (
    ActivationFunction(
        "silu",
        F.silu,
        aliases=("swish",),
        modules=(ModuleMatch(_HF + "SiLUActivation"), ModuleMatch(_TORCH + "SiLU")),
        kernel_id=0,
        formula="x * sigmoid(x)",
        properties=props(True, False, -0.2784645, float("inf")),
        family="sigmoid-weighted",
        derivative=_d_silu,
    ),
    ActivationFunction(
        "gelu_tanh",
        _gelu_tanh,
        aliases=("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_accurate", "gelu_python_tanh"),
        modules=(
            ModuleMatch(_HF + "GELUTanh"),
            ModuleMatch(_HF + "NewGELUActivation"),
            ModuleMatch(_HF + "FastGELUActivation"),
            ModuleMatch(_HF + "AccurateGELUActivation"),
            ModuleMatch(_TORCH + "GELU", (("approximate", "tanh"),)),
        ),
        kernel_id=1,
        formula="0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))",
        properties=props(True, False, -0.1700408, float("inf")),
        family="sigmoid-weighted",
        derivative=_d_gelu_tanh,
    ),
    ActivationFunction(
        "relu",
        F.relu,
        modules=(ModuleMatch(_TORCH + "ReLU"),),
        kernel_id=2,
        formula="max(x, 0)",
        properties=props(False, True, 0.0, float("inf"), kinks=(0.0,)),
        family="relu",
        derivative=_d_relu,
    ),
    ActivationFunction(
        "gelu",
        F.gelu,
        aliases=("gelu_python",),
        modules=(ModuleMatch(_HF + "GELUActivation"), ModuleMatch(_TORCH + "GELU", (("approximate", "none"),))),
        formula="0.5 * x * (1 + erf(x / sqrt(2)))",
        properties=props(True, False, -0.1699713, float("inf")),
        family="sigmoid-weighted",
        derivative=_d_gelu,
    ),
    ActivationFunction(
        "relu2",
        _relu2,
        modules=(ModuleMatch(_HF + "ReLUSquaredActivation"),),
        formula="max(x, 0)^2",
        properties=props(True, True, 0.0, float("inf")),
        family="relu",
        derivative=_d_relu2,
    ),
    ActivationFunction(
        "quick_gelu",
        _quick_gelu,
        modules=(ModuleMatch(_HF + "QuickGELUActivation"),),
        formula="x * sigmoid(1.702 * x)",
        properties=props(True, False, -0.1636102, float("inf")),
        family="sigmoid-weighted",
        derivative=_d_quick_gelu,
    ),
    ActivationFunction(
        "fatrelu",
        _fatrelu,
        modules=(ModuleMatch("actlab.functions.table.FATReLU"),),
        formula="x if x >= threshold else 0 (fn: threshold = 0)",
        properties=props(False, True, 0.0, float("inf"), kinks=(0.0,), parameters=("threshold",)),
        family="relu",
        parameters=MappingProxyType({"threshold": 0.0}),
        function=_fatrelu_at,
        derivative=_d_fatrelu,
    ),
):
    register_function(_entry)


def _known() -> str:
    return ", ".join(sorted(n for e in FUNCTIONS.values() for n in e.names))


def get_function(name: str) -> ActivationFunction:
    """The entry named ``name`` (canonical or alias, any case).

    Raises:
        UnknownActivationError: no entry has that name.

    Example:
        >>> get_function("gelu_pytorch_tanh").name
        'gelu_tanh'
    """
    key = name.lower()
    for entry in FUNCTIONS.values():
        if key in entry.names:
            return entry
    raise UnknownActivationError(f"unknown activation {name!r}; known: {_known()}")


def lookup_module(module: nn.Module) -> ActivationFunction | None:
    """The entry whose module classes include ``module``'s exact class (and attributes), else ``None``.

    Example:
        >>> lookup_module(torch.nn.GELU(approximate="tanh")).name
        'gelu_tanh'
        >>> lookup_module(torch.nn.Dropout()) is None
        True
    """
    for entry in FUNCTIONS.values():
        if any(m.matches(module) for m in entry.modules):
            return entry
    return None


def lookup(obj: str | nn.Module | Callable[[Tensor], Tensor] | ActivationFunction) -> ActivationFunction:
    """The entry for a name, a module (by class) or a function (the entry's own ``fn``).

    Raises:
        UnknownActivationError: nothing in the table matches ``obj``.

    Example:
        >>> lookup(torch.nn.functional.silu).name
        'silu'
    """
    if isinstance(obj, ActivationFunction):
        return obj
    if isinstance(obj, str):
        return get_function(obj)
    if isinstance(obj, nn.Module):
        entry = lookup_module(obj)
        what = f"module {type(obj).__module__}.{type(obj).__qualname__}"
    else:
        entry = next((e for e in FUNCTIONS.values() if e.fn is obj), None)
        what = f"function {getattr(obj, '__qualname__', obj)!r}"
    if entry is None:
        raise UnknownActivationError(f"{what} is not in actlab's activation table (known: {_known()})")
    return entry


def kernel_functions() -> dict[int, ActivationFunction]:
    """The entries the C kernels support, keyed by their ``actlab_act`` id.

    Example:
        >>> sorted(e.name for e in kernel_functions().values())
        ['gelu_tanh', 'relu', 'silu']
    """
    return {e.kernel_id: e for e in FUNCTIONS.values() if e.kernel_id is not None}
