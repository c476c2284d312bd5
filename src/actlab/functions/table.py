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
        properties: open-ended facts (``{"zero_below": 0.0}``...) later features may read; empty for now.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    aliases: tuple[str, ...] = ()
    modules: tuple[ModuleMatch, ...] = ()
    kernel_id: int | None = None
    formula: str = ""
    properties: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name followed by the aliases."""
        return (self.name, *self.aliases)

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _relu2(x: Tensor) -> Tensor:
    return torch.square(F.relu(x))


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


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
    ),
    ActivationFunction(
        "relu",
        F.relu,
        modules=(ModuleMatch(_TORCH + "ReLU"),),
        kernel_id=2,
        formula="max(x, 0)",
    ),
    ActivationFunction(
        "gelu",
        F.gelu,
        aliases=("gelu_python",),
        modules=(ModuleMatch(_HF + "GELUActivation"), ModuleMatch(_TORCH + "GELU", (("approximate", "none"),))),
        formula="0.5 * x * (1 + erf(x / sqrt(2)))",
    ),
    ActivationFunction(
        "relu2",
        _relu2,
        modules=(ModuleMatch(_HF + "ReLUSquaredActivation"),),
        formula="max(x, 0)^2",
    ),
    ActivationFunction(
        "quick_gelu",
        _quick_gelu,
        modules=(ModuleMatch(_HF + "QuickGELUActivation"),),
        formula="x * sigmoid(1.702 * x)",
    ),
    ActivationFunction(
        "fatrelu",
        _fatrelu,
        modules=(ModuleMatch("actlab.functions.table.FATReLU"),),
        formula="x if x >= threshold else 0 (fn: threshold = 0)",
        properties=MappingProxyType({"parameters": ("threshold",)}),
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
        >>> lookup_module(torch.nn.Tanh()) is None
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
