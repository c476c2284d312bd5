"""``actlab eval``: perplexity dense and with a sparsity plan, on the evaluation split."""

from __future__ import annotations

from pathlib import Path

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, console, print_json, processes, quiet_libraries


def eval(  # noqa: A001  (the command is called eval)
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    plan: Path = typer.Option(None, "--plan", help="Plan directory from `actlab calibrate`, or a Hub repo id (owner/name); without it only the dense model is measured."),
    data: str = typer.Option("default", "--data", "-d", help="Corpus: 'default' (built-in, offline), a text file, a directory, a .jsonl[:field] or hf:<name>."),
    tokens: int = typer.Option(16384, "--tokens", "-n", help="Evaluation tokens, from the corpus's eval split (disjoint from calibration)."),
    seq_len: int = typer.Option(256, "--seq-len", "-L", help="Tokens per window."),
    protocol: str = typer.Option("strict", "--protocol", help="strict: every token sparsified and scored. teal: the first half of each window dense, the second half sparsified and scored (the TEAL paper's protocol)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    tasks: str = typer.Option(None, "--tasks", help="Downstream accuracy instead of perplexity, on local tasks built from the corpus's test split: actlab-cloze, actlab-mc (comma-separated) or all."),
    scorer: str = typer.Option("actlab", "--scorer", help="With --tasks: actlab (built in) or harness (lm-evaluation-harness; pip install 'actlab[tasks]'). Both give the same accuracies."),
    items: int = typer.Option(200, "--items", help="With --tasks: items per task (fewer if the text runs out)."),
    seed: int = typer.Option(0, "--seed", help="With --tasks: which items are drawn."),
    kernels: bool = typer.Option(False, "--kernels", help="With --tasks: run the plan on the sparse-input kernel modules, not masking hooks."),
) -> None:
    """Measure a plan's quality: perplexity dense and sparse, and how much the plan skips.

    Reports the perplexity increase in %, the model-wide sparsity measured on the evaluation text
    (weighted by the parameter count of the linears each mask lets a token skip) and the fraction of all
    linear weight bytes (LM head included) a token does not read.

    Example:

        actlab eval --plan plans/teal50 --tokens 16384 --json

        actlab eval --plan plans/teal50 --tasks actlab-cloze,actlab-mc --scorer harness
    """
    if tasks is not None:
        from actlab.cli.eval_tasks import run_tasks

        checks.at_least("--items", items, 1)
        checks.at_least("--batch-size", batch_size, 1)
        checks.at_least("--threads", threads, 0)
        checks.plan_dir(plan)
        checks.corpus(data)
        return run_tasks(model, plan, data, tasks, scorer, items, seed, kernels, batch_size, threads, json_out)
    checks.at_least("--tokens", tokens, 1)
    checks.at_least("--seq-len", seq_len, 2)
    checks.at_least("--batch-size", batch_size, 1)
    checks.at_least("--threads", threads, 0)
    checks.plan_dir(plan)
    checks.corpus(data)
    with cli_errors(), processes() as group:  # under torchrun each rank scores its share of the windows
        import torch

        import actlab
        from actlab.data.windows import make_windows
        from actlab.plan_eval import PROTOCOLS, EvalError, evaluate_plan

        if protocol not in PROTOCOLS:
            raise EvalError(f"unknown --protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        loaded = actlab.SparsityPlan.from_pretrained(plan) if plan is not None else None  # fail before loading a model
        if threads > 0:
            torch.set_num_threads(threads)
        quiet_libraries()
        net, tok = actlab.load_model(model)
        if loaded is not None:
            actlab.check_plan(net, loaded)
        windows = make_windows(actlab.load_corpus(data), tok, seq_len, tokens, split="eval")
        result = evaluate_plan(net, loaded, windows, protocol=protocol, batch_size=batch_size,
                               progress=group.is_main, dist=group)
    d = result.to_dict()
    d["plan"] = str(plan) if plan is not None else None
    label = f"{protocol} protocol" + (" (first half of each window dense)" if protocol == "teal" else "")
    console.print(
        f"{result.method}: PPL {result.ppl_dense:.3f} -> {result.ppl:.3f} ({result.ppl_increase_pct:+.2f}%), "
        f"model-wide sparsity {result.sparsity_model_wide:.1%}"
        + (f" ({result.sparsity_model_wide_net:.1%} net of rotations)"
           if result.sparsity_model_wide_net != result.sparsity_model_wide else "")
        + f", weight bytes skipped "
        f"{result.bytes_skipped_frac:.1%}; {result.tokens} tokens, {label}",
        highlight=False,
    )
    if json_out:
        print_json(d)
