"""``actlab train``: induce activation sparsity by training (or fine-tune densely, the baseline).

The objective's own fields (its config dataclass in ``actlab.train.CONFIGS``) are set with ``--set
field=value`` (repeatable) or ``--config FILE.json``; the loop's settings (tokens, learning rate, schedule,
checkpoints) are the command's options. Every option and field is checked before the model loads.
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from actlab.cli import checks
from actlab.cli.common import cli_errors, console, fail, print_json, quiet_libraries
from actlab.cli.train_config import build_config, objectives_help

PRECISIONS = ("auto", "fp32", "bf16")
#: what a run writes into --out (checked for foreign files before the model loads); checkpoints/ beside them
OUTPUT_FILES = ("config.json", "model.safetensors", "train_config.json", "log.jsonl", "report.html",
                "plan/plan.json", "plan/thresholds.safetensors")
#: where --help lists the registered objectives (filled in only when help is shown: it imports torch)
_OBJECTIVES_MARK = "OBJECTIVES-LIST"


def train(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model to train: alias, directory, .gguf, random:<preset> or hub id."),
    objective: str = typer.Option(None, "--objective", help="Training objective (listed above); may come from --config instead."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: the trained model (save_pretrained, safetensors), train_config.json, log.jsonl, checkpoints/, report.html."),
    sets: list[str] = typer.Option(None, "--set", help="Objective field as field=value (repeatable); lists as a,b,c. The fields of each objective are listed above."),
    config_file: Path = typer.Option(None, "--config", help="JSON file with the objective's config (the dict of its fields; an 'objective' key is optional). --set overrides it."),
    data: str = typer.Option("default", "--data", "-d", help="Corpus: 'default' (built-in, offline), a text file, a directory, a .jsonl[:field] or hf:<name>. Trains on its calib split, evaluates on its disjoint eval split."),
    tokens: int = typer.Option(200_000, "--tokens", "-n", help="Training tokens in all (each window is seen once; the calib split must hold them)."),
    seq_len: int = typer.Option(256, "--seq-len", "-L", help="Tokens per window."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate (AdamW), after linear warmup; cosine decay to 10% of it."),
    warmup: float = typer.Option(0.06, "--warmup", help="Warmup as a fraction of the optimizer steps, in [0, 1)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where the hardware supports it, else fp32), fp32 or bf16."),
    eval_tokens: int = typer.Option(16384, "--eval-tokens", help="Evaluation tokens (eval split) for perplexity and density; 0: no evaluation."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate every N optimizer steps (0: only before and after training)."),
    log_every: int = typer.Option(10, "--log-every", help="Optimizer steps per log row (loss, lr, tokens/s, the objective's metrics)."),
    calib_tokens: int = typer.Option(16384, "--calib-tokens", help="Training tokens an objective calibrates on before training (mask-lora's thresholds)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Write a resumable checkpoint every N optimizer steps (0: none)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint (same objective and options)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the window order and of LoRA's initialisation."),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=checks.OVERWRITE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Train a model with a sparsity-inducing objective; write an ordinary model directory and a report.

    Trains on the calib split of --data for --tokens tokens, evaluates perplexity and per-layer
    activation density on the disjoint eval split before and after, and writes into --out the model
    (every actlab command takes it: actlab eval --model OUT, profile, calibrate, bench), train_config.json,
    log.jsonl and report.html. Objectives (set their fields with --set field=value or --config FILE.json):

    OBJECTIVES-LIST

    Examples:

        actlab train --objective dense --tokens 200000 --out runs/dense-ft

        actlab calibrate --method teal --allocation global --sparsity 0.5 --out plans/teal50

        actlab train --objective mask-lora --set plan=plans/teal50 --out runs/mask-lora

        actlab train --objective deft --set weight=1.0 --out runs/deft

        actlab train --objective relufy --set activation=drelu --set l1=1e-4 --set adapter=full --out runs/drelu

        actlab train --objective topk-ste --set sparsity=0.4 --out runs/topk

        actlab train --objective deft --out runs/deft --resume
    """
    _check_loop_options(tokens, seq_len, batch_size, grad_accum, lr, warmup, precision, eval_tokens,
                        eval_every, calib_tokens, checkpoint_every, threads)
    checks.at_least("--log-every", log_every, 1)
    with cli_errors():
        config = build_config(objective, config_file, sets or [])
        if hasattr(config, "load_plan"):  # a config naming a plan loads it now: a bad path fails before the model
            config.load_plan()
        args = _train_args(tokens=tokens, seq_len=seq_len, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                           warmup=warmup, precision=precision, eval_every=eval_every, log_every=log_every,
                           eval_tokens=max(eval_tokens, 1), checkpoint_every=checkpoint_every,
                           calib_tokens=calib_tokens, seed=seed)
    checks.corpus(data)
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch only rank 0 writes
    if main:
        with cli_errors():
            _check_out(out, resume, overwrite, config, args)
    from actlab.outputs import claim_output

    # --out is locked from here to the report's last byte (the loop's own claim nests inside this one)
    with cli_errors(), claim_output(out, overwrite or resume, OUTPUT_FILES) if main else nullcontext():
        import torch

        import actlab
        from actlab.data.windows import make_windows
        from actlab.train.loop import train as run_train

        if threads > 0:
            torch.set_num_threads(threads)
        quiet_libraries()
        # PEFT asks transformers a deprecated question on every wrap; the user can do nothing about it
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        start = time.perf_counter()
        net, tok = actlab.load_model(model)
        corpus = actlab.load_corpus(data)
        train_windows = make_windows(corpus, tok, seq_len, tokens, split="calib")
        eval_windows = make_windows(corpus, tok, seq_len, eval_tokens, split="eval") if eval_tokens > 0 else None
        result = run_train(net, config, train_windows, args=args, out=out, resume=resume, progress=True,
                           eval_data=eval_windows, tokenizer=tok, overwrite=overwrite)
        if not main:
            return
        run = {"base_model": model, "data": data, "command": _command(),
               "wall_s": round(time.perf_counter() - start, 1)}
        summary = _summary(result, out, config, run)
    _print(summary)
    if json_out:
        print_json(summary)


# ---------------------------------------------------------------------------------------------- checks


def _check_loop_options(tokens: int, seq_len: int, batch_size: int, grad_accum: int, lr: float, warmup: float,
                        precision: str, eval_tokens: int, eval_every: int, calib_tokens: int,
                        checkpoint_every: int, threads: int) -> None:
    checks.at_least("--tokens", tokens, 1)
    checks.at_least("--seq-len", seq_len, 2)
    checks.at_least("--batch-size", batch_size, 1)
    checks.at_least("--grad-accum", grad_accum, 1)
    checks.positive("--lr", lr)
    if not 0.0 <= warmup < 1.0:
        fail(f"--warmup is a fraction of the optimizer steps in [0, 1) (0.06 is 6%), got {warmup}")
    checks.one_of("--precision", precision, PRECISIONS)
    checks.at_least("--eval-tokens", eval_tokens, 0)
    checks.at_least("--eval-every", eval_every, 0)
    checks.at_least("--calib-tokens", calib_tokens, 1)
    checks.at_least("--checkpoint-every", checkpoint_every, 0)
    checks.at_least("--threads", threads, 0)
    per_step = seq_len * batch_size * grad_accum
    if tokens < per_step:
        fail(f"--tokens {tokens} is less than one optimizer step ({per_step} tokens: --seq-len {seq_len} x "
             f"--batch-size {batch_size} x --grad-accum {grad_accum}); raise --tokens or lower those")


def _check_out(out: Path, resume: bool, overwrite: bool, config: Any, args: Any) -> None:
    """``--out`` is writable as asked; with ``--resume`` it holds a checkpoint of a run with these settings."""
    if resume:
        from actlab.train import checkpoint
        from actlab.train.log import clean
        from actlab.train.loop import REPORTING

        if not Path(out).is_dir():
            fail(f"--resume: --out {out} does not exist; start the run without --resume first")
        path = checkpoint.latest(Path(out))
        if path is None:
            fail(f"--resume: {out} holds no checkpoint to continue from (a run writes them with --checkpoint-every "
                 "N); start it again without --resume (add --overwrite to replace its files)")
        # the loop compares everything again (data, processes, precision); these two are known before the model
        saved = checkpoint.load_state(path).get("run", {})
        now = clean({"config": config.to_dict(), "args": {k: v for k, v in args.to_dict().items()
                                                          if k not in REPORTING}})
        diffs = checkpoint.differences({k: saved.get(k, {}) for k in now}, now)
        if diffs:
            fail(f"--resume: checkpoint {path} is from a run with other settings: {'; '.join(diffs)}; resume with "
                 "the objective and options that started it, or start a new run in another --out")
    # a resume replaces the run's own files as it continues it
    checks.out_dir(out, overwrite or resume, OUTPUT_FILES)


def _train_args(**kwargs: Any) -> Any:
    from actlab.train.loop import TrainArgs

    return TrainArgs(**kwargs)


# ---------------------------------------------------------------------------------------------- the end


def _summary(result: Any, out: Path, config: Any, run: dict[str, Any]) -> dict[str, Any]:
    """The run's headline numbers; writes ``OUT/report.html`` and records it as actlab's (the lock is held)."""
    from actlab.outputs import record_outputs
    from actlab.report.train_report import summarize, write_train_report

    report = write_train_report(out, run=run)
    record_outputs(out, written=[report.name])
    plan = Path(out) / "plan"  # the plan arms (mask-lora, topk-ste) write theirs, fingerprinted for this model
    return {"objective": config.objective, "model": str(out), "report": str(report),
            "plan": str(plan) if (plan / "plan.json").is_file() else None, **run,
            "config": config.to_dict(), **summarize(result.history)}


def _command() -> str:
    import shlex
    import sys

    return shlex.join(["actlab", *sys.argv[1:]])


def _print(s: dict[str, Any]) -> None:
    def num(x: Any, fmt: str) -> str:
        return "-" if x is None else fmt.format(x)

    console.print(
        f"{s['objective']}: trained {s['tokens']:,} tokens in {num(s['time_s'], '{:.1f}')} s ({s['steps']} steps, "
        f"{num(s['tokens_per_s'], '{:.0f}')} tokens/s); eval perplexity {num(s['ppl_before'], '{:.3f}')} → "
        f"{num(s['ppl_after'], '{:.3f}')}" + (f" ({s['ppl_change_pct']:+.2f}%)" if s["ppl_change_pct"] is not None
                                               else "")
        + f"; mean density {num(s['density_before'], '{:.1%}')} → {num(s['density_after'], '{:.1%}')}"
        + (f", exact zeros {num(s['zero_frac_before'], '{:.1%}')} → {num(s['zero_frac_after'], '{:.1%}')}"
           if (s["zero_frac_before"] or 0) > 0 or (s["zero_frac_after"] or 0) > 0 else "") + "\n"
        f"model: [bold]{s['model']}[/]  report: [bold]{s['report']}[/]"
        + (f"  plan: [bold]{s['plan']}[/] (actlab eval --model {s['model']} --plan {s['plan']})" if s["plan"] else ""),
        highlight=False, soft_wrap=True,  # unbroken lines: the paths and the command paste back
    )


# ---------------------------------------------------------------------------------------------- help


class TrainCommand(TyperCommand):
    """The train command's help lists the objectives from the registry, read only when help is shown."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if self.help and _OBJECTIVES_MARK in self.help:
            try:
                listing = objectives_help()
            except Exception as e:  # help must still show when an objective module fails to import
                listing = f"(the objective registry could not be read: {type(e).__name__}: {e})"
            self.help = self.help.replace(_OBJECTIVES_MARK, listing.replace("[", "\\["))
        super().format_help(ctx, formatter)


#: the click command class ``actlab.cli.main`` registers this command with
COMMAND_CLASS = TrainCommand
