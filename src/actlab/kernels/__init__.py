"""Sparse-input kernels: skip the weight rows whose input activation is below its threshold.

``ops`` holds the functional API (``sparse_linear``, ``sparse_gated_mlp``, their references and the
``torch.ops.actlab`` registrations); ``linear`` the modules that replace ``nn.Linear`` layers and gated
MLPs (``SparseLinear``, ``SparseGatedMLP``). Names load lazily: importing this package loads neither torch
nor the compiled extension.

Kernels and references agree on NaN and inf (see :mod:`actlab.kernels.ops`): a NaN input is dropped, a kept
inf input propagates, and a non-finite weight propagates as in a dense layer fed the masked input (such
calls run the reference). Bad shapes raise ``ValueError`` on every path.

Example:
    >>> from actlab.kernels import SparseLinear, available
    >>> isinstance(available(), bool)
    True
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ActlabKernelWarning": "actlab.kernels.ops",
    "Activation": "actlab.kernels.reference",
    "available": "actlab.kernels.ops",
    "sparse_linear": "actlab.kernels.ops",
    "sparse_linear_reference": "actlab.kernels.reference",
    "sparse_gated_mlp": "actlab.kernels.ops",
    "sparse_gated_mlp_reference": "actlab.kernels.reference",
    "SparseLinear": "actlab.kernels.linear",
    "SparseGatedMLP": "actlab.kernels.linear",
    "WEIGHT_FORMATS": "actlab.kernels.quant",
    "PackedWeight": "actlab.kernels.quant",
    "pack": "actlab.kernels.quant",
    "sparse_linear_packed": "actlab.kernels.quant",
    "install_kernels": "actlab.kernels.swap",
    "remove_kernels": "actlab.kernels.swap",
    "quantize_linears_": "actlab.kernels.quantize",
    "fake_quantize_": "actlab.kernels.quantize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'actlab.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
