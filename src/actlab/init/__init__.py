"""Data-dependent initialisation of weight layers (LSUV), on the shared site hooks."""

from actlab.init.lsuv import LSUVError, LSUVLayer, LSUVReport, lsuv_, orthonormal_

__all__ = ["LSUVError", "LSUVLayer", "LSUVReport", "lsuv_", "orthonormal_"]
