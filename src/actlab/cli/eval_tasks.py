"""``actlab eval --tasks``: downstream accuracy on the local tasks, dense and with a plan.

Kept beside ``eval.py`` (perplexity) so that each path of the command reads top to bottom.
"""

from __future__ import annotations

from pathlib import Path

from actlab.cli.common import cli_errors, console, print_json, quiet_libraries


def run_tasks(model: str, plan: Path | None, data: str, tasks: str, scorer: str, items: int, seed: int,
              kernels: bool, batch_size: int, threads: int, json_out: bool) -> None:
    """Build the items of ``tasks`` from ``data``'s test split, score them dense and sparse, print the table.

    Example:
        >>> run_tasks("random:tiny-llama", None, "default", "actlab-mc", "actlab", 50, 0, False, 16, 0, True)  # doctest: +SKIP
    """
    with cli_errors():
        from actlab.eval.tasks import TaskError, parse_tasks
        from actlab.task_eval import SCORERS

        names = parse_tasks(tasks)
        if scorer not in SCORERS:
            raise TaskError(f"unknown --scorer {scorer!r}; use one of {', '.join(SCORERS)}")
        if scorer == "harness":
            from actlab.eval.harness import require_lm_eval

            require_lm_eval()  # before minutes of model loading, not after
        import torch

        import actlab
        from actlab.eval.tasks import build_items, source_passages
        from actlab.task_eval import evaluate_tasks

        loaded = actlab.SparsityPlan.from_pretrained(plan) if plan is not None else None
        if threads > 0:
            torch.set_num_threads(threads)
        quiet_libraries()
        net, tok = actlab.load_model(model)
        if loaded is not None:
            actlab.check_plan(net, loaded, kernels)
        corpus = actlab.load_corpus(data)
        passages = source_passages(corpus, tok)
        rows = {n: build_items(n, corpus, tok, n=items, seed=seed, passages=passages) for n in names}
        result = evaluate_tasks(net, tok, loaded, rows, scorer=scorer, kernels=kernels, batch_size=batch_size)
    label = result.method + (" (kernels)" if kernels else "")
    for name, dense in result.dense.items():
        sparse = result.sparse[name] if result.sparse is not None else None
        parts = []
        for metric, value in dense.metrics.items():
            fmt = "{:.2f}" if metric == "perplexity" else "{:.1%}"
            text = f"{metric} {fmt.format(value)}"
            if sparse is not None:
                text += f" -> {fmt.format(sparse.metrics[metric])}"
            parts.append(text)
        console.print(f"{name} ({dense.n} items, {scorer} scorer, dense"
                      + (f" -> {label}" if sparse is not None else "") + "): " + ", ".join(parts)
                      + f"; acc stderr {dense.acc_stderr:.1%}", highlight=False)
    if json_out:
        d = result.to_dict()
        d.update(model=model, plan=str(plan) if plan is not None else None, data=data, seed=seed)
        print_json(d)
