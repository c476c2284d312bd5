"""lm-evaluation-harness as a scorer: an in-memory model (a plan applied or not) through ``HFLM``.

lm-eval is an optional extra (``pip install 'actlab[tasks]'``), imported only when a harness score is asked
for. The model is handed to ``HFLM(pretrained=model, tokenizer=tok)`` as it is, so whatever is installed in
it (masking hooks or sparse-kernel modules) runs inside the harness's forward passes. Tasks are the local
ones of :mod:`actlab.eval.tasks`, written with their YAML to a directory the harness reads through
``TaskManager(include_path=...)``; the Hub is never contacted (``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``).

Example:
    >>> from actlab.eval.harness import harness_score
    >>> results = harness_score(model, tok, {"actlab-mc": items})   # doctest: +SKIP
    >>> results["actlab-mc"].metrics["acc"]                          # doctest: +SKIP
    0.43
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from actlab.eval.tasks import TASKS, TaskError, TaskResult, write_task_dir

LM_EVAL_VERSION = "0.4.13"  # the release tested (constraints.txt)
INSTALL_HINT = "pip install 'actlab[tasks]'"


class HarnessMissingError(TaskError):
    """lm-eval is not installed; the message says how to install it."""


def require_lm_eval() -> Any:
    """The ``lm_eval`` module, or :class:`HarnessMissingError` naming the install command.

    Example:
        >>> lm_eval = require_lm_eval()   # doctest: +SKIP
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (the [hf] part must import too)
    except ImportError as e:
        raise HarnessMissingError(f"--scorer harness needs lm-evaluation-harness ({e.name or e} is missing): "
                                  f"run `{INSTALL_HINT}` (lm-eval[hf]=={LM_EVAL_VERSION})") from e
    return lm_eval


def harness_score(model: torch.nn.Module, tokenizer: Any, items: dict[str, list[dict[str, Any]]],
                  batch_size: int = 16, log_samples: bool = False) -> dict[str, TaskResult]:
    """Score the local tasks in ``items`` (task -> items) with lm-eval's ``simple_evaluate`` on ``model``.

    ``log_samples=True`` also fills each result's ``per_item`` with the harness's loglikelihoods (the
    equality test reads them). The model is put in eval mode and its previous mode restored.

    Example:
        >>> harness_score(model, tok, {"actlab-cloze": items})["actlab-cloze"].metrics   # doctest: +SKIP
        {'acc': 0.41, 'perplexity': 31.2}

    Raises:
        HarnessMissingError: lm-eval is not installed.
    """
    for name in items:
        if name not in TASKS:
            raise TaskError(f"unknown task {name!r}; the local tasks are {', '.join(TASKS)}")
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(var, "1")
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-request warnings drown the CLI's output
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="actlab-tasks-") as tmp:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            out = lm_eval.simple_evaluate(
                model=lm, tasks=list(items), task_manager=TaskManager(include_path=write_task_dir(items, tmp)),
                log_samples=log_samples, bootstrap_iters=0, verbosity="ERROR",
            )
    finally:
        model.train(was_training)
    return {name: _result(name, out["results"][name], out.get("samples", {}).get(name, ()), len(rows))
            for name, rows in items.items()}


def _result(name: str, row: dict[str, Any], samples: Sequence[dict[str, Any]], n: int) -> TaskResult:
    # lm-eval names a metric "<metric>,<filter>"; the local tasks use only the "none" filter
    metrics = {m: float(row[f"{m},none"]) for m in TASKS[name].metrics}
    a = metrics["acc"]
    stderr = (a * (1 - a) / (n - 1)) ** 0.5 if n > 1 else 0.0
    per_item = [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]
    return TaskResult(name, n, metrics, stderr, "harness", per_item)
