"""Activation functions: the one table of names, torch functions, module classes and kernel ids.

Example:
    >>> from actlab.functions import get_function
    >>> get_function("swish").name
    'silu'
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
    "fit_rational",
    "get_function",
    "kernel_functions",
    "lookup",
    "lookup_module",
    "register_function",
]
