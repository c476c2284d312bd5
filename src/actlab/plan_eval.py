"""Quality of a sparsity plan: perplexity dense and sparse on evaluation windows, and what it skips.

It composes the two peers below it, ``actlab.sparsity`` (apply the plan, count what its masks drop) and
``actlab.eval`` (perplexity), which do not import each other (``tests/test_layering.py``); hence its place
at the top of the package, beside ``optimize``.

Protocols:
    ``strict``  every token of every window is sparsified (and scored).
    ``teal``    the first half of each window runs dense and only the second half is sparsified and
                scored: the TEAL paper's protocol (a dense prefill, sparse decoding). Labelled as such.

The sparsity reported is *measured* on the evaluation windows (the masks count what they drop), not the
calibration estimate: ``sparsity_model_wide`` weighted by the parameter count of the linears each mask lets
a token skip, and ``bytes_skipped_frac`` over every linear weight a token reads, the LM head included.

Example:
    >>> result = evaluate_plan(model, plan, eval_windows)       # doctest: +SKIP
    >>> round(result.ppl_increase_pct, 1), result.protocol       # doctest: +SKIP
    (8.3, 'strict')
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from actlab.distributed import Dist
from actlab.errors import ActlabError
from actlab.models.wrappers import unwrap
from actlab.sparsity.apply import apply_, check_plan, dense_prefix, remove_, track_sparsity
from actlab.sparsity.metrics import plan_metrics
from actlab.sparsity.plan import SparsityPlan

PROTOCOLS = ("strict", "teal")


class EvalError(ActlabError):
    """An evaluation that cannot run as asked (unknown protocol, windows too short...)."""


@dataclass(frozen=True)
class SparseEvalResult:
    """Dense and sparse perplexity on the same windows and positions, and the measured sparsity."""

    ppl_dense: float
    ppl: float
    ppl_increase_pct: float
    sparsity_model_wide: float
    bytes_skipped_frac: float
    sparsity_calibration: float
    protocol: str
    tokens: int
    windows: int
    seq_len: int
    method: str
    #: mask sparsity less the weights a rotated plan's ``x Q`` products read (== sparsity_model_wide unrotated)
    sparsity_model_wide_net: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measured_metrics(model: nn.Module, plan: SparsityPlan, dropped: dict[str, float]) -> dict[str, float]:
    """Plan metrics from per-module measured drop fractions (``track_sparsity`` output)."""
    model = unwrap(model)[0]  # plan paths are those of the model inside torch.compile/DDP/PEFT
    items = []
    for e in plan.entries:
        vals = [dropped[m] for m in e.modules if m in dropped]
        s = sum(vals) / len(vals) if vals else 0.0
        items.append((e.consumers, s, e.site))
    return plan_metrics(model, items, rotations={e.site: e.rotation for e in plan.entries if e.rotation is not None})


def evaluate_plan(
    model: nn.Module,
    plan: SparsityPlan | None,
    windows: torch.Tensor,
    protocol: str = "strict",
    batch_size: int = 8,
    progress: bool = False,
    ppl_dense: float | None = None,
    dist: Dist | None = None,
) -> SparseEvalResult:
    """Perplexity of ``model`` dense and with ``plan`` applied, on ``windows`` (the evaluation split).

    The model is left as it was: the plan is removed afterwards (pass ``ppl_dense`` to reuse a dense run).
    ``dist`` (:func:`actlab.distributed.setup` under torchrun): every rank passes the same ``windows``, scores
    its share, and gets the single-process result (perplexities and the measured sparsity).

    Example:
        >>> r = evaluate_plan(model, plan, windows, dist=actlab.distributed.setup())   # doctest: +SKIP

    Raises:
        EvalError: unknown protocol, or windows too short for the TEAL protocol.
    """
    from actlab.eval.perplexity import perplexity

    if plan is not None:
        check_plan(model, plan)  # before the dense run, not after it
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    seq_len = windows.shape[1]
    prefix = seq_len // 2 if protocol == "teal" else 0
    if protocol == "teal" and prefix < 1:
        raise EvalError("the teal protocol needs windows of at least 2 tokens")
    if ppl_dense is None or plan is None:
        dense = perplexity(model, windows, batch_size, progress, score_from=prefix, dist=dist)
        ppl_dense = dense.ppl
        if plan is None:
            return SparseEvalResult(ppl_dense, ppl_dense, 0.0, 0.0, 0.0, 0.0, protocol, dense.tokens,
                                    dense.windows, seq_len, "dense")
    apply_(model, plan)
    try:
        with track_sparsity(model, dist) as dropped, dense_prefix(model, prefix) if prefix else nullcontext():
            sparse = perplexity(model, windows, batch_size, progress, score_from=prefix, dist=dist)
    finally:
        remove_(model)
    m = measured_metrics(model, plan, dropped)
    dense_ppl = ppl_dense
    return SparseEvalResult(
        ppl_dense=dense_ppl,
        ppl=sparse.ppl,
        ppl_increase_pct=100.0 * (sparse.ppl / dense_ppl - 1.0),
        sparsity_model_wide=m["sparsity_model_wide"],
        bytes_skipped_frac=m["bytes_skipped_frac"],
        sparsity_calibration=float(plan.metrics.get("sparsity_model_wide", 0.0)),
        protocol=protocol,
        tokens=sparse.tokens,
        windows=sparse.windows,
        seq_len=seq_len,
        method=plan.method,
        sparsity_model_wide_net=m.get("sparsity_model_wide_net", m["sparsity_model_wide"]),
    )
