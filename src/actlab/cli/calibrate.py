"""``actlab calibrate``: make a sparsity plan for a model, at a sparsity or within a quality budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, console, fail, print_json, processes, quiet_libraries

METHODS_HELP = (
    "teal (|x| thresholds on every projection input), wina (|x|*||W col||), chess (per-neuron MLP "
    "activation thresholds + q/o inputs), cats (MLP activation threshold), topk (k largest per token, no "
    "calibration), cett (per-layer CETT target on the down input)."
)


def calibrate(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    method: str = typer.Option("teal", "--method", help=f"Method: {METHODS_HELP}"),
    sparsity: float = typer.Option(None, "--sparsity", "-s", help="Model-wide target sparsity in [0, 1): fraction of the q/k/v/o/gate/up/down weights a token skips."),
    max_ppl_increase: float = typer.Option(None, "--max-ppl-increase", "-p", help="Quality target instead: the sparsest plan whose perplexity rises by at most P percent on held-out calibration text."),
    cett: float = typer.Option(None, "--cett", help="For --method cett: the CETT target per layer (e.g. 0.2)."),
    allocation: str = typer.Option("uniform", "--allocation", "-a", help="uniform (same sparsity everywhere), greedy (TEAL's block-wise greedy) or global (across layers and projections by estimated output damage; the best quality). teal and wina only."),
    sites: list[str] = typer.Option(None, "--sites", help="teal/wina: only these input kinds (repeatable): attn.qkv_in, attn.o_in, mlp.gate_up_in, mlp.down_in. The sparsity stays model-wide."),
    rotate: list[str] = typer.Option(None, "--rotate", help="teal/wina: mask these input kinds in their principal-component basis (repeatable): attn.qkv_in, attn.o_in, mlp.gate_up_in. Much less error per masked input; costs a dense d x d product per rotated input (o_in's is nearly free), counted in bytes_skipped_frac. Masking path only."),
    data: str = typer.Option("default", "--data", "-d", help="Calibration corpus: 'default' (built-in, offline), a text file, a directory, a .jsonl[:field] or hf:<name>."),
    tokens: int = typer.Option(16384, "--tokens", "-n", help="Calibration tokens (from the corpus's calib split; never the eval split)."),
    search_tokens: int = typer.Option(4096, "--search-tokens", help="Held-out calibration tokens the quality search measures perplexity on."),
    seq_len: int = typer.Option(256, "--seq-len", "-L", help="Tokens per window."),
    out: Path = typer.Option(..., "--out", "-o", help="Plan directory to write (plan.json + thresholds.safetensors)."),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=checks.OVERWRITE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    sequential: bool = typer.Option(False, "--sequential", help="Models larger than memory: keep the decoder layers on disk (accelerate device_map) and calibrate one layer at a time; peak memory is one layer plus activations, same plan. Not with --allocation global."),
) -> None:
    """Calibrate a sparsification method on a model and write the plan.

    Give either --sparsity (the model-wide fraction of linear weights each token skips) or
    --max-ppl-increase (bisects the method's knob on held-out calibration text until perplexity rises by
    at most that many percent: the Sparsing Law's PPL-p% procedure). Apply the plan with
    `actlab eval --plan`, `actlab generate --plan` or actlab.apply_(model, SparsityPlan.load(DIR)).

    Example:

        actlab calibrate --method teal --allocation global --max-ppl-increase 1 --out plans/teal-ppl1
    """
    if (sparsity is None) == (max_ppl_increase is None) and not (method == "cett" and cett is not None):
        fail("give exactly one of --sparsity or --max-ppl-increase (for --method cett: --cett or --max-ppl-increase)")
    checks.at_least("--tokens", tokens, 1)
    checks.at_least("--search-tokens", search_tokens, 1)
    checks.at_least("--seq-len", seq_len, 2)
    checks.at_least("--threads", threads, 0)
    checks.fraction("--sparsity", sparsity)
    checks.non_negative("--max-ppl-increase", max_ppl_increase)
    checks.fraction("--cett", cett)
    checks.corpus(data)
    with cli_errors():
        config = _config(method, sparsity, cett, allocation, sites or [], rotate or [])
        if sequential:  # refused before a model larger than memory is loaded
            from actlab.sparsity.sequential import check_sequential

            check_sequential(getattr(config, "allocation", "uniform"))
    checks.out_dir(out, overwrite, ("plan.json", "thresholds.safetensors"))
    from actlab.outputs import claim_output_main

    # locked from here to the plan's last byte (by rank 0 alone under torchrun: the ranks share the passes)
    with cli_errors(), processes() as group, claim_output_main(out, overwrite, dist=group):
        import torch

        import actlab

        if threads > 0:
            torch.set_num_threads(threads)
        quiet_libraries()
        from actlab.sparsity.calibrate import calibration_windows

        # random: weights live only in memory; the layer-by-layer pass still runs on them (tests, checks)
        offload = "disk" if sequential and not model.startswith("random:") else None
        net, tok = actlab.load_model(model, device_map=offload)
        corpus = actlab.load_corpus(data)
        extra = search_tokens if max_ppl_increase is not None else 0
        calib, heldout = calibration_windows(corpus, tok, seq_len, tokens, extra)
        if max_ppl_increase is not None and heldout.shape[0] == 0:
            fail("not enough calibration windows left for the quality search: lower --tokens or --seq-len")
        with _Bar() as bar:
            prepared = actlab.prepare(net, config, calib if config.threshold_based else None, progress=bar.update,
                                      dist=group, sequential=sequential)
            if max_ppl_increase is None:
                plan = prepared.plan()
                result = None
            else:
                result = actlab.search_quality(net, prepared, heldout, max_ppl_increase,
                                               progress=lambda d, t: bar.update("quality search", d, t), dist=group)
                plan = result.plan
        plan.calibration.update({"model": model, "data": data, "corpus_fingerprint": corpus.fingerprint,
                                 "split": "calib", "search_tokens": int(heldout.numel()) if result else 0})
        if group.is_main:
            plan.save_pretrained(out, overwrite=overwrite)  # README.md card: the directory is a Hub artefact
    summary: dict[str, Any] = {
        "plan": str(out),
        "method": plan.method,
        "allocation": getattr(plan.config, "allocation", "uniform"),
        "sparsity_model_wide": plan.metrics["sparsity_model_wide"],
        "bytes_skipped_frac": plan.metrics["bytes_skipped_frac"],
        "calibration_tokens": int(calib.numel()),
    }
    if "sparsity_model_wide_net" in plan.metrics:
        summary.update({"rotate": list(plan.config.rotate),
                        "sparsity_model_wide_net": plan.metrics["sparsity_model_wide_net"]})
    if result is not None:
        summary.update({"max_ppl_increase": max_ppl_increase, "ppl_increase_pct": result.increase_pct,
                        "ppl_dense_heldout": result.ppl_dense, "ppl_heldout": result.ppl, "knob": result.knob})
    console.print(
        f"plan [bold]{out}[/]: {plan.method} ({summary['allocation']}), model-wide sparsity "
        f"{summary['sparsity_model_wide']:.1%}"
        + (f" ({summary['sparsity_model_wide_net']:.1%} net of rotations)" if "rotate" in summary else "")
        + (f", held-out PPL +{result.increase_pct:.2f}%" if result is not None else ""),
        highlight=False,
    )
    if json_out:
        print_json(summary)


def _config(method: str, sparsity: float | None, cett: float | None, allocation: str, sites: list[str],
            rotate: list[str] = ()) -> Any:
    """The method's config from the options (through the registry, so new methods need no change here)."""
    from actlab.sparsity.config import CONFIGS, config_from_dict
    from actlab.sparsity.errors import PlanError

    cls = CONFIGS.get(method)
    if cls is None:
        raise PlanError(f"unknown method {method!r}; known: {', '.join(sorted(CONFIGS))}")
    fields = set(cls.__dataclass_fields__)
    d: dict[str, Any] = {"method": method}
    if allocation != "uniform":
        if "allocation" not in fields:
            raise PlanError(f"{method} supports --allocation uniform only")
        d["allocation"] = allocation
    if sites:
        if "sites" not in fields:
            raise PlanError(f"--sites applies to teal and wina, not {method}")
        d["sites"] = list(sites)
    if rotate:
        if "rotate" not in fields:
            raise PlanError(f"--rotate applies to teal and wina, not {method}")
        d["rotate"] = list(rotate)
    if method == "cett":
        if sparsity is not None:
            raise PlanError("cett's knob is the CETT target: give --cett C (or --max-ppl-increase), not --sparsity")
        if cett is not None:
            d["cett"] = cett
    elif cett is not None:
        raise PlanError("--cett is only for --method cett")
    elif sparsity is not None:
        d["sparsity"] = sparsity
    return config_from_dict(d)


class _Bar:
    """A rich progress bar on stderr with one task per stage (calibration pass, allocation, search)."""

    def __enter__(self) -> _Bar:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.progress.start()
        self.tasks: dict[str, Any] = {}
        return self

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
