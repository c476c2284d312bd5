"""Activation functions: the one table of names, torch functions, module classes and kernel ids.

The table (:mod:`~actlab.functions.table`) holds the seven functions models and kernels use; the catalogue
(:mod:`~actlab.functions.catalogue`) adds the rest on import, learnable rationals live in
:mod:`~actlab.functions.rational`, swaps by name in :mod:`~actlab.functions.swap_by_name`.

Example:
    >>> from actlab.functions import get_function
    >>> get_function("swish").name
    'silu'
    >>> get_function("mish").grad(torch.tensor([0.0])).item()      # doctest: +SKIP
    0.6
"""

from actlab.functions.table import (
    FUNCTIONS,
    ActivationFunction,
    ActivationParameterError,
    FATReLU,
    ModuleMatch,
    UnknownActivationError,
    get_function,
    kernel_functions,
    lookup,
    lookup_module,
    register_function,
)

# the catalogue registers its entries on import: after the table, before anyone looks a name up
from actlab.functions import catalogue as _catalogue  # noqa: E402,F401  isort: skip
from actlab.functions.modules import XIELU, TableActivation  # noqa: E402  isort: skip
from actlab.functions.rational import PAU, SAU, fit_rational  # noqa: E402  isort: skip
from actlab.functions.measure import cost_per_element, measure_all, sparsity_at_normal  # noqa: E402  isort: skip
from actlab.functions.swap_by_name import swap_activation_  # noqa: E402  isort: skip

__all__ = [
    "FUNCTIONS",
    "PAU",
    "SAU",
    "XIELU",
    "ActivationFunction",
    "ActivationParameterError",
    "TableActivation",
    "FATReLU",
    "ModuleMatch",
    "UnknownActivationError",
    "cost_per_element",
    "fit_rational",
    "get_function",
    "kernel_functions",
    "lookup",
    "lookup_module",
    "measure_all",
    "register_function",
    "sparsity_at_normal",
    "swap_activation_",
]
