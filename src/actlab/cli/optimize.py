"""``actlab optimize``: the main job, from a model to a measured, faster sparsity plan."""

from __future__ import annotations

from pathlib import Path

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, console, fail, print_json, quiet_libraries


def optimize(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    max_ppl_increase: float = typer.Option(None, "--max-ppl-increase", "-p", help="Quality budget: the sparsest plan whose held-out perplexity increase, at the upper end of its --confidence interval over windows, is at most P percent (default 5 when --sparsity is not given)."),
    sparsity: float = typer.Option(None, "--sparsity", "-s", help="Or a model-wide sparsity target: the best-quality plan at it."),
    method: str = typer.Option("auto", "--method", help="auto (try teal/global, wina/global and chess, keep the best) or one method name."),
    data: str = typer.Option("default", "--data", "-d", help="Corpus: 'default' (built-in, offline), a file, a directory, .jsonl[:field] or hf:<name>."),
    calib_tokens: int = typer.Option(4096, "--calib-tokens", help="Calibration tokens (calib split)."),
    search_tokens: int = typer.Option(2048, "--search-tokens", help="Held-out calibration tokens for the choice and the quality search."),
    confidence: float = typer.Option(0.95, "--confidence", help="Level of the interval over held-out windows whose upper end must keep the budget (0.5 to <1)."),
    eval_tokens: int | None = typer.Option(None, "--eval-tokens", help="Evaluation tokens (eval split, never seen in calibration); default 32768, or the whole eval split of a smaller corpus; 128 windows read the increase within about +-0.7%."),
    seq_len: int = typer.Option(256, "--seq-len", "-L", help="Tokens per window."),
    new_tokens: int = typer.Option(64, "--new-tokens", help="Tokens decoded per speed measurement."),
    threads: int = typer.Option(2, "--threads", "-t", help="Threads for torch and the kernels."),
    out: Path = typer.Option(Path("runs/optimize"), "--out", "-o", help="Output directory: plan/, report.html, summary.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help=checks.OVERWRITE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Profile, calibrate (choosing the method), evaluate and benchmark; write the plan and one report.

    Example:

        actlab optimize --model smollm2-135m --max-ppl-increase 5 --out runs/smollm2-opt
    """
    if max_ppl_increase is not None and sparsity is not None:
        fail("give one of --max-ppl-increase or --sparsity, not both")
    if max_ppl_increase is None and sparsity is None:
        max_ppl_increase = 5.0
    for name, value in (("--calib-tokens", calib_tokens), ("--search-tokens", search_tokens),
                        ("--eval-tokens", eval_tokens)):
        if value is not None:
            checks.at_least(name, value, 1)
    checks.at_least("--seq-len", seq_len, 2)
    checks.at_least("--new-tokens", new_tokens, 2)
    checks.at_least("--threads", threads, 1)
    checks.fraction("--sparsity", sparsity)
    checks.non_negative("--max-ppl-increase", max_ppl_increase)
    if not 0.5 <= confidence < 1:
        fail(f"--confidence must be at least 0.5 and below 1 (a level such as 0.95), got {confidence}")
    from actlab.sparsity.config import CONFIGS

    if method != "auto" and method not in CONFIGS:
        fail(f"unknown sparsification method {method!r}; use auto or one of {', '.join(sorted(CONFIGS))}")
    checks.corpus(data)
    from actlab.optimize import OUTPUT_FILES

    checks.out_dir(out, overwrite, OUTPUT_FILES)
    with cli_errors():
        from actlab.optimize import optimize as run

        quiet_libraries()
        summary = run(model=model, out=out, max_ppl_increase=max_ppl_increase, sparsity=sparsity, method=method,
                      data=data, calib_tokens=calib_tokens, search_tokens=search_tokens, eval_tokens=eval_tokens,
                      seq_len=seq_len, new_tokens=new_tokens, threads=threads, overwrite=overwrite, confidence=confidence,
                      step=lambda msg: console.print(f"· {msg}", highlight=False))
    ev = summary["eval"]
    console.print(
        f"chosen {summary['chosen']}: sparsity {ev['sparsity_model_wide']:.1%}, perplexity {ev['ppl_dense']:.3f} → "
        f"{ev['ppl']:.3f} ({ev['ppl_increase_pct']:+.2f}%"
        + (f", {confidence:.0%} interval [{ev['ppl_increase_ci_pct'][0]:+.2f}, {ev['ppl_increase_ci_pct'][1]:+.2f}]"
           if ev.get("ppl_increase_ci_pct") else "") + f"), decode {summary['speedup']:.2f}x dense\n"
        f"report: [bold]{summary['report']}[/]  plan: {summary['plan']}",
        highlight=False,
    )
    ci = ev.get("ppl_increase_ci_pct")
    if not ev.get("within_budget", True) and ci and ci[0] <= max_ppl_increase:
        console.print(f"[yellow]note:[/] on the eval split perplexity rose {ev['ppl_increase_pct']:+.2f}%, over the "
                      f"+{max_ppl_increase:g}% budget, but its interval [{ci[0]:+.2f}, {ci[1]:+.2f}] includes it: this "
                      "eval sample cannot tell; raise --eval-tokens for a sharper reading", highlight=False)
    elif not ev.get("within_budget", True):
        console.print(f"[yellow]note:[/] on the eval split perplexity rose {ev['ppl_increase_pct']:+.2f}%, more than the "
                      f"+{max_ppl_increase:g}% met on held-out calibration text; raise --search-tokens for a closer "
                      "match", highlight=False)
    if json_out:
        print_json(summary)
