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

from actlab.distributed import Dist, is_multi
from actlab.models.wrappers import unwrap
from actlab.sparsity.apply import apply_, masked_modules
from actlab.sparsity.collect import CalibrationSample
from actlab.sparsity.config import SparsityConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.methods.base import Method, Progress, ThresholdMethod, handler_for
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


def calibration_windows(
    corpus: Any, tokenizer: Any, seq_len: int, tokens: int, heldout_tokens: int = 0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(calib, heldout)`` windows, both from the corpus's calibration split, disjoint from each other.

    ``calib`` is the same whether or not held-out windows are asked for (the split's window ranking is
    nested), so a plan calibrated with and without a quality search saw the same text. ``seed`` draws
    another sample of the split (``actlab.data.windows``), e.g. to see how a selection varies with it.

    Example:
        >>> calib, heldout = calibration_windows(corpus, tok, 256, 16384, 4096)   # doctest: +SKIP
    """
    from actlab.data.windows import make_windows

    calib = make_windows(corpus, tokenizer, seq_len, tokens, split="calib", seed=seed)
    if heldout_tokens <= 0:
        return calib, calib[:0]
    both = make_windows(corpus, tokenizer, seq_len, tokens + heldout_tokens, split="calib", seed=seed)
    seen = {bytes(row.numpy()) for row in calib}
    keep = [i for i, row in enumerate(both) if bytes(row.numpy()) not in seen]
    return calib, both[keep]


def prepare(
    model: nn.Module,
    config: SparsityConfig,
    data: Any,
    progress: Progress | None = None,
    sample: CalibrationSample | None = None,
    dist: Dist | None = None,
    sequential: bool = False,
) -> Method:
    """Run ``config``'s calibration once; ``.plan(knob)`` then gives a plan at any sparsity, cheaply.

    ``sample`` (from :func:`actlab.sparsity.collect.collect`, with every site the method reads) skips the
    calibration pass, so several methods compared on one model share one pass (the benchmark does).

    ``dist`` (:func:`actlab.distributed.setup` under torchrun): every rank passes the same ``data``; the
    calibration pass is split over the processes and its sample gathered in global order, so every rank
    holds the method a single process would (the same plan: equal thresholds).

    ``sequential``: run the calibration pass one decoder layer at a time (:mod:`actlab.sparsity.sequential`):
    with a model loaded by ``load_model(path, device_map="disk")`` peak memory is one layer plus the
    calibration activations, and the plan is the one a full pass makes. An option of the pass, not of the
    config: the method and its plan are the same either way. The global allocation is refused (its Fisher
    pass needs the whole model).

    Example:
        >>> method = prepare(model, TealConfig(allocation="greedy"), calib)    # doctest: +SKIP
        >>> plans = [method.plan(s) for s in (0.3, 0.4, 0.5)]                   # doctest: +SKIP
        >>> method = prepare(offloaded_model, TealConfig(0.5), calib, sequential=True)   # doctest: +SKIP
    """
    if not isinstance(config, SparsityConfig):
        raise PlanError(f"expected a sparsity config such as actlab.TealConfig(0.5), got {type(config).__name__}")
    if masked_modules(model):
        raise PlanError("the model already has a sparsity plan applied: call actlab.remove_(model) first")
    # sites are module paths of the Hugging Face model; PEFT / DDP / compile wrappers sit around it
    model = unwrap(model)[0]
    with torch.no_grad():
        handler = handler_for(config)
        windows = _windows(data)
        if sequential and is_multi(dist):
            raise PlanError("sequential (layer-by-layer) calibration runs in one process: drop torchrun or sequential")
        if sample is not None and issubclass(handler, ThresholdMethod):
            return handler(model, config, windows, progress, sample=sample, dist=dist)
        return handler(model, config, windows, progress, dist=dist, sequential=sequential)


def calibrate(model: nn.Module, config: SparsityConfig, data: Any, progress: Progress | None = None,
              dist: Dist | None = None, sequential: bool = False) -> SparsityPlan:
    """The plan for ``config`` calibrated on ``data`` (``[n, seq_len]`` windows), without applying it.

    ``dist``: several processes share the calibration pass (see :func:`prepare`); every rank gets the plan.
    ``sequential``: one decoder layer at a time, for models larger than memory (see :func:`prepare`).

    Example:
        >>> plan = calibrate(model, TealConfig(0.5), calib)                          # doctest: +SKIP
        >>> plan = calibrate(model, TealConfig(0.5), calib, dist=distributed.setup())  # doctest: +SKIP
    """
    return prepare(model, config, data, progress, dist=dist, sequential=sequential).plan()


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
