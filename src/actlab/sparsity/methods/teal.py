"""TEAL: magnitude thresholds on the inputs of every projection (Liu et al., 2024).

Keep ``x_i`` iff ``|x_i| > t``; ``t`` per group from the calibration distribution of ``|x|``.

Example:
    >>> plan = actlab.sparsify_(model, TealConfig(0.5, allocation="greedy"), calib)   # doctest: +SKIP
"""

from __future__ import annotations

from actlab.sparsity.config import TealConfig
from actlab.sparsity.methods.base import ThresholdMethod, register_method


@register_method
class Teal(ThresholdMethod):
    """Plain magnitude: ``w_i = 1``."""

    config_cls = TealConfig
