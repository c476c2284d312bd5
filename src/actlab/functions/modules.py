"""Modules for table functions that torch and transformers have no module for.

:class:`TableActivation` computes any entry of the table at given parameters (it holds the entry's name
and the parameters, so a swap's record can rebuild it); :class:`XIELU` is xIELU with its two learnable
slopes, as transformers' ``XIELUActivation`` computes it but in the input's dtype with fp32 parameters.

Example:
    >>> TableActivation("snake", alpha=2.0)
    TableActivation(function='snake', alpha=2.0)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TableActivation(nn.Module):
    """The table's function ``function`` at ``params`` (defaults for the rest), as a module.

    Example:
        >>> TableActivation("hardshrink")(torch.tensor([-1.0, 0.2])).tolist()
        [-1.0, 0.0]
    """

    def __init__(self, function: str, **params: Any) -> None:
        super().__init__()
        from actlab.functions.table import get_function

        entry = get_function(function)
        self.function = entry.name  # canonical: what lookup_module matches on
        self.params = entry.resolve(**params)

    def forward(self, x: Tensor) -> Tensor:
        from actlab.functions.table import FUNCTIONS

        entry = FUNCTIONS[self.function]
        return entry.fn(x) if entry.function is None else entry.function(x, **self.params)

    def extra_repr(self) -> str:
        return ", ".join([f"function={self.function!r}", *(f"{k}={v!r}" for k, v in self.params.items())])


def _bf16(v: float) -> float:
    return torch.tensor(v, dtype=torch.bfloat16).item()


#: transformers' XIELUActivation defaults (0.8, 0.8, 0.5, -1e-6) as its bfloat16 parameters hold them (after its
#: softplus), so that the table's xielu computes what ``ACT2FN["xielu"]`` does
XIELU_DEFAULTS: dict[str, float] = {
    "alpha_p": F.softplus(torch.tensor(math.log(math.expm1(0.8)), dtype=torch.bfloat16)).item(),
    "alpha_n": (torch.tensor(0.5, dtype=torch.bfloat16)
                + F.softplus(torch.tensor(math.log(math.expm1(0.3)), dtype=torch.bfloat16))).item(),
    "beta": _bf16(0.5),
    "eps": _bf16(-1e-6),
}


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def xielu(x: Tensor, alpha_p: Tensor | float, alpha_n: Tensor | float, beta: float, eps: float) -> Tensor:
    """xIELU (Huang & Schlag 2024): ``alpha_p x² + beta x`` for x > 0, ``alpha_n (expm1(min(x, eps)) - x) + beta x``
    else; the definition transformers' ``XIELUActivation`` computes.

    Example:
        >>> xielu(torch.tensor([2.0]), 0.8, 0.8, 0.5, -1e-6).tolist()
        [4.199999809265137]
    """
    return torch.where(x > 0, alpha_p * x * x + beta * x, alpha_n * (torch.expm1(torch.clamp_max(x, eps)) - x) + beta * x)


class XIELU(nn.Module):
    """xIELU with learnable ``alpha_p`` and ``alpha_n`` (kept positive and ``alpha_n >= beta`` by a softplus,
    as the paper and transformers parameterise them).

    Example:
        >>> sorted(n for n, _ in XIELU().named_parameters())
        ['alpha_n', 'alpha_p']
    """

    def __init__(self, alpha_p: float = XIELU_DEFAULTS["alpha_p"], alpha_n: float = XIELU_DEFAULTS["alpha_n"],
                 beta: float = XIELU_DEFAULTS["beta"], eps: float = XIELU_DEFAULTS["eps"]) -> None:
        super().__init__()
        self.alpha_p = nn.Parameter(torch.tensor(_inv_softplus(alpha_p), dtype=torch.float64).float())
        self.alpha_n = nn.Parameter(torch.tensor(_inv_softplus(alpha_n - beta), dtype=torch.float64).float())
        self.beta = float(beta)
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        a_p = F.softplus(self.alpha_p).to(x.dtype)
        a_n = (self.beta + F.softplus(self.alpha_n)).to(x.dtype)
        return xielu(x, a_p, a_n, self.beta, self.eps)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, eps={self.eps}"


__all__ = ["XIELU", "XIELU_DEFAULTS", "TableActivation", "xielu"]
