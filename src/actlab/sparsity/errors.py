"""The sparsity package's user-facing error."""

from __future__ import annotations


class PlanError(ValueError):
    """A sparsity plan or config that cannot be used: wrong model, truncated, invalid, unknown method/version.

    Raised before anything is applied, so a model is never left half-sparsified.
    """
