"""``actlab profile``: how sparse are this model's activations, where, and what do they look like."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, console, print_json, processes, quiet_libraries


def profile(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    data: str = typer.Option("default", "--data", "-d", help="Corpus: 'default' (built-in, offline), a text file, a directory, a .jsonl[:field] or hf:<name>[:<config>][:<split>]."),
    tokens: int = typer.Option(16384, "--tokens", "-n", help="Tokens to profile (rounded up to whole windows)."),
    seq_len: int = typer.Option(256, "--seq-len", "-L", help="Tokens per window."),
    out: Path = typer.Option(Path("runs/profile"), "--out", "-o", help="Output directory for profile.json, report.html and PNGs."),
    sites: list[str] = typer.Option(None, "--sites", help="Only these sites (glob, repeatable), e.g. 'mlp.down_in' or 'layers.3.*'."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    massive_abs: float = typer.Option(100.0, "--massive-abs", help="Massive activation: |x| at least this..."),
    massive_ratio: float = typer.Option(1000.0, "--massive-ratio", help="...and at least this many times the site's median |x|."),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=checks.OVERWRITE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Profile activations at every canonical site and write a report.

    Writes OUT/profile.json (per site: density at each ε, mean/std/absmax/kurtosis, |x| quantiles
    and histogram, CETT curve for MLP down inputs; massive activations; per-layer neuron
    frequency summary), OUT/report.html (self-contained, plots embedded) and the PNGs.

    Example:

        actlab profile --model smollm2-135m --tokens 16384 --out runs/smollm2
    """
    checks.at_least("--tokens", tokens, 1)
    checks.at_least("--seq-len", seq_len, 2)
    checks.at_least("--batch-size", batch_size, 1)
    checks.non_negative("--massive-abs", massive_abs)
    checks.positive("--massive-ratio", massive_ratio)
    checks.at_least("--threads", threads, 0)
    checks.corpus(data)
    checks.out_dir(out, overwrite, ("profile.json", "report.html"))
    # Profiling runs ~25 small parallel ops per site; OpenMP threads spinning between them cost
    # 2-3x on a busy machine. Only effective before torch loads, which this command does lazily.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with cli_errors(), processes() as d:  # under torchrun the ranks share the pass; rank 0 writes
        import torch

        from actlab.activations.massive import MassiveConfig
        from actlab.report.profile_report import profile_report

        if threads > 0:
            torch.set_num_threads(threads)
        quiet_libraries()
        result = profile_report(
            model=model, data=data, tokens=tokens, seq_len=seq_len, out=out, sites=sites or None,
            batch_size=batch_size, massive=MassiveConfig(abs_threshold=massive_abs, ratio=massive_ratio),
            overwrite=overwrite, progress=d.is_main, dist=d,
        )
    console.print(f"report: [bold]{result['report']}[/]  data: {result['profile']}", highlight=False)
    if json_out:
        print_json(result)
