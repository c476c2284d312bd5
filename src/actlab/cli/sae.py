"""``actlab sae``: train a sparse autoencoder on one site (streaming from the model) or evaluate one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, console, fail, print_json, quiet_libraries

ACTIONS = ("train", "eval")
KINDS = ("topk", "batchtopk")
#: what `sae train` writes into --out: SAELens's two files, its sparsity file, and actlab's metrics
OUTPUT_FILES = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "metrics.json")


def sae(
    action: str = typer.Argument(..., help="train: train an SAE into --out. eval: evaluate the SAE in DIR."),
    directory: Path = typer.Argument(None, metavar="[DIR]", help="eval: the SAE directory (cfg.json + sae_weights.safetensors). train: the same as --out."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    site: str = typer.Option("layers.15.resid_out", "--site", help="train: the site, full name (e.g. layers.15.resid_out, layers.3.mlp.down_in)."),
    d_sae: int = typer.Option(4608, "--d-sae", help="train: number of latents."),
    k: int = typer.Option(32, "--k", help="train: active latents per token (BatchTopK: on average)."),
    kind: str = typer.Option("topk", "--kind", help="train: topk or batchtopk."),
    tokens: int = typer.Option(500_000, "--tokens", "-n", help="train: most tokens to read from the calib split. eval: tokens of the eval split."),
    max_seconds: float = typer.Option(0.0, "--max-seconds", help="train: wall-time budget of the training loop in seconds (0: none; --tokens still bounds it)."),
    out: Path = typer.Option(None, "--out", "-o", help="train: output directory (SAELens layout: cfg.json, sae_weights.safetensors; plus sparsity.safetensors, metrics.json)."),
    data: str = typer.Option("default", "--data", "-d", help="Corpus: 'default' (built-in, offline), a text file, a directory, a .jsonl[:field] or hf:<name>."),
    seq_len: int = typer.Option(256, "--seq-len", "-L", help="Tokens per window."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per model forward."),
    sae_batch: int = typer.Option(4096, "--sae-batch", help="train: token activations per SAE step."),
    buffer_batches: int = typer.Option(8, "--buffer-batches", help="train: shuffle buffer size, in SAE steps' worth of tokens."),
    reuse: int = typer.Option(1, "--reuse", help="train: times each token is trained on, on average (the model's forward is the cost)."),
    lr: float = typer.Option(0.0, "--lr", help="train: peak Adam learning rate (0: 2e-4 * sqrt(16384 / d_sae), Gao et al.)."),
    exclude_first: int = typer.Option(1, "--exclude-first", help="Leading positions of each window left out of training, evaluation and splicing (the first token's massive activations)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="train: scale inputs (a power of two) to mean squared norm ~ d_in; folded into the saved weights."),
    eval_tokens: int = typer.Option(16384, "--eval-tokens", help="train: evaluate on this many eval-split tokens after training (0: skip)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and the buffer's sampling."),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=checks.OVERWRITE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Sparse autoencoders: `sae train` (TopK / BatchTopK, activations streamed from the model, never dumped)
    and `sae eval DIR` (FVU, L0, dead latents, next-token loss with the reconstruction spliced in).

    The directory is SAELens's layout (sae_lens.SAE.load_from_disk reads it). Training reads the calib split,
    evaluation the disjoint eval split.

    Examples:

        actlab sae train --site layers.15.resid_out --d-sae 4608 --k 32 --tokens 1000000 --max-seconds 600 --out runs/sae-l15

        actlab sae eval runs/sae-l15 --tokens 16384 --json
    """
    checks.one_of("action", action, ACTIONS)
    checks.at_least("--tokens", tokens, 1)
    checks.at_least("--exclude-first", exclude_first, 0)
    checks.at_least("--seq-len", seq_len, exclude_first + 2)
    checks.at_least("--batch-size", batch_size, 1)
    checks.at_least("--threads", threads, 0)
    checks.corpus(data)
    if action == "train":
        out = out if out is not None else directory  # `sae train DIR` reads as --out DIR
        _check_train(d_sae, k, kind, max_seconds, out, sae_batch, buffer_batches, reuse, lr, eval_tokens, overwrite)
    elif directory is None:
        fail("sae eval needs the SAE directory: actlab sae eval DIR")
    from actlab.interp.sae import SAEError  # light: torch loads with it, but only on this path

    with cli_errors():
        try:
            import torch

            if threads > 0:
                torch.set_num_threads(threads)
            quiet_libraries()
            if action == "train":
                result = _train(model=model, site=site, d_sae=d_sae, k=k, kind=kind, tokens=tokens,
                                max_seconds=max_seconds, out=out, data=data, seq_len=seq_len, batch_size=batch_size,
                                sae_batch=sae_batch, buffer_batches=buffer_batches, reuse=reuse, lr=lr,
                                exclude_first=exclude_first, normalize=normalize, eval_tokens=eval_tokens,
                                seed=seed, overwrite=overwrite)
            else:
                result = _eval(directory, model, data, tokens, seq_len, batch_size)
        except SAEError as e:  # until actlab.errors lists it, say it in one line here
            fail(str(e))
    _print(result)
    if json_out:
        print_json(result)


def _check_train(d_sae: int, k: int, kind: str, max_seconds: float, out: Path | None, sae_batch: int,
                 buffer_batches: int, reuse: int, lr: float, eval_tokens: int, overwrite: bool) -> None:
    checks.at_least("--d-sae", d_sae, 1)
    checks.at_least("--k", k, 1)
    if k > d_sae:
        fail(f"--k {k} is more than --d-sae {d_sae}: a token cannot use more latents than there are")
    checks.one_of("--kind", kind, KINDS)
    checks.non_negative("--max-seconds", max_seconds)
    checks.at_least("--sae-batch", sae_batch, 1)
    checks.at_least("--buffer-batches", buffer_batches, 1)
    checks.at_least("--reuse", reuse, 1)
    checks.non_negative("--lr", lr)
    checks.at_least("--eval-tokens", eval_tokens, 0)
    if out is None:
        fail("sae train needs --out DIR")
    checks.out_dir(out, overwrite, OUTPUT_FILES)


def _train(model: str, site: str, d_sae: int, k: int, kind: str, tokens: int, max_seconds: float, out: Path,
           data: str, seq_len: int, batch_size: int, sae_batch: int, buffer_batches: int, reuse: int, lr: float,
           exclude_first: int, normalize: bool, eval_tokens: int, seed: int, overwrite: bool) -> dict[str, Any]:
    import json

    import actlab
    from actlab.data.windows import make_windows
    from actlab.interp.sae_train import SAETrainArgs, evaluate_sae, sae_for_site, site_activations, train_sae
    from actlab.outputs import staged_output

    args = SAETrainArgs(max_tokens=tokens, max_seconds=max_seconds or None, batch_size=sae_batch,
                        buffer_batches=buffer_batches, reuse=reuse, lr=lr or None, seed=seed)
    t0 = time.perf_counter()
    net, tok = actlab.load_model(model)
    corpus = actlab.load_corpus(data)
    sae = sae_for_site(net, site, d_sae=d_sae, k=k, kind=kind, model_name=model,
                       normalization="scale" if normalize else "none", exclude_first=exclude_first,
                       context_size=seq_len, dataset=data, seed=seed)
    windows = make_windows(corpus, tok, seq_len, tokens, split="calib", seed=seed)
    trained = train_sae(site_activations(net, sae.cfg.site, windows, batch_size, exclude_first, shuffle_seed=seed),
                        sae, args, progress=True)
    evaluation = None
    if eval_tokens > 0:
        ev_windows = make_windows(corpus, tok, seq_len, eval_tokens, split="eval")
        evaluation = evaluate_sae(net, sae, ev_windows, batch_size, progress=True).to_dict()
    summary = {"action": "train", "out": str(out), "model": model, "site": sae.cfg.site, "kind": kind,
               "d_in": sae.cfg.d_in, "d_sae": d_sae, "k": k, "exclude_first": exclude_first,
               "threads": _threads(), "train": trained.to_dict() | {"log": trained.log[-5:]}, "eval": evaluation,
               "wall_s": round(time.perf_counter() - t0, 1)}
    with staged_output(out, overwrite) as tmp:
        sae.save(tmp, log_sparsity=trained.log_sparsity())
        (tmp / "metrics.json").write_text(json.dumps(summary | {"train": trained.to_dict()}, indent=2,
                                                     default=float) + "\n")
    return summary


def _eval(directory: Path, model: str, data: str, tokens: int, seq_len: int, batch_size: int) -> dict[str, Any]:
    import actlab
    from actlab.data.windows import make_windows
    from actlab.interp.sae import SparseAutoencoder
    from actlab.interp.sae_train import evaluate_sae

    t0 = time.perf_counter()
    sae = SparseAutoencoder.load(directory)  # a bad directory fails before the model loads
    net, tok = actlab.load_model(model)
    windows = make_windows(actlab.load_corpus(data), tok, seq_len, tokens, split="eval")
    result = evaluate_sae(net, sae, windows, batch_size, progress=True)
    return {"action": "eval", "sae": str(directory), "model": model, "site": sae.cfg.site, "kind": sae.cfg.kind,
            "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "k": sae.cfg.k, "threads": _threads(),
            "eval": result.to_dict(), "wall_s": round(time.perf_counter() - t0, 1)}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _print(result: dict[str, Any]) -> None:
    tr, ev = result.get("train"), result.get("eval")
    if tr:
        console.print(f"trained {result['site']} ({result['kind']}, d_sae {result['d_sae']}, k {result['k']}): "
                      f"{tr['steps']} steps, {tr['tokens']:,} tokens in {tr['seconds']:.0f} s; train FVU "
                      f"{tr['fvu']:.3f}, L0 {tr['l0']:.1f}, dead {tr['dead_fraction']:.1%}", highlight=False)
    if ev:
        console.print(f"eval ({ev['tokens']:,} tokens): FVU {ev['fvu']:.3f} (variance explained "
                      f"{ev['variance_explained']:.1%}), L0 {ev['l0']:.1f}, never fired {ev['dead_fraction']:.1%}; "
                      f"next-token loss clean {ev['loss_clean']:.3f}, spliced {ev['loss_spliced']:.3f}, "
                      f"mean-ablated {ev['loss_mean_ablated']:.3f} (recovered {ev['recovered_vs_mean']:.1%}), "
                      f"zero-ablated {ev['loss_zero_ablated']:.3f} (recovered {ev['recovered_vs_zero']:.1%})",
                      highlight=False)
    if result.get("out"):
        console.print(f"SAE: [bold]{result['out']}[/] (SAELens layout)", highlight=False)
