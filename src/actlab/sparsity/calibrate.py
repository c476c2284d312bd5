"""The public verbs: ``sparsify_`` (calibrate and apply), ``calibrate`` (plan only), ``prepare`` (reusable).

The verb never changes when a method is added: the config's class picks the registered handler.

Example:
    >>> import actlab
    >>> model, tok = actlab.load_model("random:tiny-llama")                       # doctest: +SKIP
    >>> plan = actlab.sparsify_(model, actlab.TealConfig(0.5), calib_windows)    # doctest: +SKIP
    >>> plan.metrics["sparsity_model_wide"]                                       # doctest: +SKIP
    0.5
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from actlab.sparsity.apply import apply_, masked_modules
from actlab.sparsity.config import SparsityConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.methods.base import Method, Progress, handler_for
from actlab.sparsity.plan import SparsityPlan


def _windows(data: Any) -> torch.Tensor | None:
    if data is None:
        return None
    ids = getattr(data, "ids", data)  # actlab.data.windows.Windows or a tensor
    if not torch.is_tensor(ids) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise PlanError("calibration data must be token windows: an integer tensor [n_windows, seq_len]")
    if ids.shape[0] == 0:
        raise PlanError("calibration data has no windows")
    return ids.long()


def prepare(model: nn.Module, config: SparsityConfig, data: Any, progress: Progress | None = None) -> Method:
    """Run ``config``'s calibration once; ``.plan(knob)`` then gives a plan at any sparsity, cheaply.

    Example:
        >>> method = prepare(model, TealConfig(allocation="greedy"), calib)    # doctest: +SKIP
        >>> plans = [method.plan(s) for s in (0.3, 0.4, 0.5)]                   # doctest: +SKIP
    """
    if not isinstance(config, SparsityConfig):
        raise PlanError(f"expected a sparsity config such as actlab.TealConfig(0.5), got {type(config).__name__}")
    if masked_modules(model):
        raise PlanError("the model already has a sparsity plan applied: call actlab.remove_(model) first")
    with torch.no_grad():
        return handler_for(config)(model, config, _windows(data), progress)


def calibrate(model: nn.Module, config: SparsityConfig, data: Any, progress: Progress | None = None) -> SparsityPlan:
    """The plan for ``config`` calibrated on ``data`` (``[n, seq_len]`` windows), without applying it."""
    return prepare(model, config, data, progress).plan()


def sparsify_(model: nn.Module, config: SparsityConfig, data: Any = None, progress: Progress | None = None) -> SparsityPlan:
    """Calibrate ``config`` on ``data`` and apply the plan to ``model`` in place; returns the plan.

    Args:
        model: a model in the adapter table.
        config: a method config (``TealConfig``, ``WinaConfig``, ``ChessConfig``, ``CatsConfig``,
            ``TopKConfig``, ``CettConfig``...).
        data: calibration token windows ``[n, seq_len]`` (``actlab.data.windows.make_windows(..., "calib")``);
            ``None`` for methods that need none (top-k).
        progress: optional ``progress(stage, done, total)`` callback.

    Example:
        >>> plan = actlab.sparsify_(model, actlab.WinaConfig(0.4), calib)    # doctest: +SKIP
        >>> plan.save("plans/wina40"); actlab.remove_(model)                  # doctest: +SKIP
    """
    plan = calibrate(model, config, data, progress)
    apply_(model, plan)
    return plan
