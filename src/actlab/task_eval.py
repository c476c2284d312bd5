"""Downstream accuracy of a sparsity plan: the local tasks scored dense and with the plan applied.

Like ``plan_eval`` (perplexity), it composes the two peers ``actlab.sparsity`` (apply the plan, masking or
kernels) and ``actlab.eval`` (the tasks and their scorers), which do not import each other; hence its place
at the top of the package. Dense and sparse runs score the same items on the same model object.

Scorers: ``actlab`` (:func:`actlab.eval.tasks.score_tasks`, no extra dependency) and ``harness``
(lm-evaluation-harness's ``HFLM`` on the in-memory model, :mod:`actlab.eval.harness`); they give the same
accuracies (``tests/eval/test_tasks.py``).

Example:
    >>> r = evaluate_tasks(model, tok, plan, {"actlab-mc": items}, scorer="harness")   # doctest: +SKIP
    >>> r.dense["actlab-mc"].metrics["acc"], r.sparse["actlab-mc"].metrics["acc"]       # doctest: +SKIP
    (0.47, 0.43)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from actlab.eval.tasks import TaskError, TaskResult, score_tasks
from actlab.sparsity.apply import apply_, check_plan, remove_
from actlab.sparsity.plan import SparsityPlan

Items = dict[str, list[dict[str, Any]]]


def _actlab_scorer(model: torch.nn.Module, tok: Any, items: Items, batch_size: int) -> dict[str, TaskResult]:
    return score_tasks(model, tok, items, batch_size)


def _harness_scorer(model: torch.nn.Module, tok: Any, items: Items, batch_size: int) -> dict[str, TaskResult]:
    from actlab.eval.harness import harness_score

    return harness_score(model, tok, items, batch_size)


SCORERS: dict[str, Callable[[torch.nn.Module, Any, Items, int], dict[str, TaskResult]]] = {
    "actlab": _actlab_scorer,
    "harness": _harness_scorer,
}


@dataclass(frozen=True)
class TaskEvalResult:
    """Per-task results dense and (with a plan) sparse, from one scorer."""

    scorer: str
    method: str
    dense: dict[str, TaskResult]
    sparse: dict[str, TaskResult] | None
    kernels: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer,
            "method": self.method,
            "kernels": self.kernels,
            "tasks": {
                name: {
                    "n": r.n,
                    "dense": r.metrics,
                    "dense_acc_stderr": r.acc_stderr,
                    **({"sparse": self.sparse[name].metrics, "sparse_acc_stderr": self.sparse[name].acc_stderr}
                       if self.sparse is not None else {}),
                }
                for name, r in self.dense.items()
            },
        }


def evaluate_tasks(model: torch.nn.Module, tokenizer: Any, plan: SparsityPlan | None, items: Items,
                   scorer: str = "actlab", kernels: bool = False, batch_size: int = 16) -> TaskEvalResult:
    """Score ``items`` (task -> items) dense and, with ``plan``, sparse; the model is left as it was.

    ``kernels=True`` runs the sparse pass on the sparse-input kernel modules instead of masking hooks.

    Example:
        >>> evaluate_tasks(model, tok, None, items).dense["actlab-cloze"].metrics   # doctest: +SKIP
        {'acc': 0.41, 'perplexity': 31.2}

    Raises:
        TaskError: unknown scorer (or lm-eval missing for ``harness``); PlanError: the plan does not fit.
    """
    if scorer not in SCORERS:
        raise TaskError(f"unknown scorer {scorer!r}; use one of {', '.join(SCORERS)}")
    run = SCORERS[scorer]
    if plan is not None:
        check_plan(model, plan, kernels)  # before the dense run, not after it
    dense = run(model, tokenizer, items, batch_size)
    if plan is None:
        return TaskEvalResult(scorer, "dense", dense, None)
    apply_(model, plan, kernels=kernels)
    try:
        sparse = run(model, tokenizer, items, batch_size)
    finally:
        remove_(model)
    return TaskEvalResult(scorer, plan.method, dense, sparse, kernels)
