"""Activation functions: the one table of names, torch functions, module classes and kernel ids.

Example:
    >>> from actlab.functions import get_function
    >>> get_function("swish").name
    'silu'
"""

from actlab.functions.table import (
    FUNCTIONS,
    ActivationFunction,
    FATReLU,
    ModuleMatch,
    UnknownActivationError,
    get_function,
    kernel_functions,
    lookup,
    lookup_module,
    register_function,
)

__all__ = [
    "FUNCTIONS",
    "ActivationFunction",
    "FATReLU",
    "ModuleMatch",
    "UnknownActivationError",
    "get_function",
    "kernel_functions",
    "lookup",
    "lookup_module",
    "register_function",
]
