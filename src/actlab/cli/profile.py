"""``actlab profile``: how sparse are this model's activations, where, and what do they look like."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from actlab.cli.common import cli_errors, console, fail, print_json, quiet_libraries


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
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Profile activations at every canonical site and write a report.

    Writes OUT/profile.json (per site: density at each ε, mean/std/absmax/kurtosis, |x| quantiles
    and histogram, CETT curve for MLP down inputs; massive activations; per-layer neuron
    frequency summary), OUT/report.html (self-contained, plots embedded) and the PNGs.

    Example:

        actlab profile --model smollm2-135m --tokens 16384 --out runs/smollm2
    """
    if tokens <= 0:
        fail(f"--tokens must be positive, got {tokens}")
    if seq_len <= 1:
        fail(f"--seq-len must be at least 2, got {seq_len}")
    # Profiling runs ~25 small parallel ops per site; OpenMP threads spinning between them cost
    # 2-3x on a busy machine. Only effective before torch loads, which this command does lazily.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with cli_errors():
        from actlab.outputs import check_writable

        check_writable(out)  # before minutes of work, not after
        import torch

        from actlab.activations.massive import MassiveConfig
        from actlab.report.profile_report import profile_report

        if threads > 0:
            torch.set_num_threads(threads)
        quiet_libraries()
        result = profile_report(
            model=model, data=data, tokens=tokens, seq_len=seq_len, out=out, sites=sites or None,
            batch_size=batch_size, massive=MassiveConfig(abs_threshold=massive_abs, ratio=massive_ratio),
        )
    console.print(f"report: [bold]{result['report']}[/]  data: {result['profile']}", highlight=False)
    if json_out:
        print_json(result)
