"""``actlab neurons``: a static neuron browser (opens from file://, no server) for some layers of one site."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import typer

from actlab.cli import checks
from actlab.cli.checks import parse_range
from actlab.cli.common import cli_errors, console, fail, print_json, quiet_libraries

DEFAULT_LATENTS = 256  # actlab.interp.browser_sae.DEFAULT_LATENTS, restated so --help does not import torch


def neurons(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    site: str = typer.Option(None, "--site", help="Site kind whose channels are shown, e.g. mlp.act_out (the default), mlp.down_in, resid_out. With --sae: implied by the SAE."),
    layers: str = typer.Option(None, "--layers", help="Layers to include: 0-3, 1,4,7 or 0-2,8 (default 0; one page per neuron of each: keep it small). With --sae: implied by the SAE."),
    neuron_ids: str = typer.Option(None, "--neurons", help=f"Only these neuron indices in each layer, e.g. 0-63 (default: all). With --sae: latent indices (default: the first {DEFAULT_LATENTS})."),
    sae_dir: Path = typer.Option(None, "--sae", help="Show the latents of this sparse autoencoder (a directory from `actlab sae train`, or SAELens's TopK / JumpReLU layout) instead of a site's channels."),
    data: str = typer.Option("default", "--data", "-d", help="Corpus: 'default' (built-in, offline), a text file, a directory, a .jsonl[:field] or hf:<name>."),
    tokens: int = typer.Option(16384, "--tokens", "-n", help="Tokens the records are made from (calibration split)."),
    seq_len: int = typer.Option(128, "--seq-len", "-L", help="Tokens per window."),
    k: int = typer.Option(20, "--k", help="Top-activating contexts kept per neuron."),
    ablate: bool = typer.Option(False, "--ablate", help="Also measure each neuron's ablation effect on next-token loss (one forward over --ablate-tokens per neuron; an SAE latent is removed from the site's activation: minus its activation times its decoder row)."),
    ablate_tokens: int = typer.Option(1024, "--ablate-tokens", help="Evaluation tokens each ablation is measured on."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory of the site (index.html, neuron.html, data/, assets/)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=checks.OVERWRITE_HELP),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Write a neuron browser: an index to search and filter, and one page per neuron.

    Each neuron page shows its activation histogram, its top-activating contexts with the activation
    on every token, the tokens its output direction promotes and suppresses through the LM head (MLP
    sites), and with --ablate the change in next-token loss when it is set to zero. The site is
    static: open OUT/index.html straight from disk.

    With --sae DIR the pages are the SAE's latents (kind "sae", ids like layers.15.resid_out.sae/17) at
    the site and layer the SAE was trained on: their records, top contexts with the latent's activation
    on every token, and the LM-head tokens of each latent's decoder row (resid_out as is, mlp.act_out /
    mlp.down_in through the down projection).

    Examples:

        actlab neurons --model smollm2-135m --site mlp.act_out --layers 0-3 --tokens 16384 --out runs/neurons

        actlab neurons --sae runs/sae-l15 --neurons 0-63 --tokens 16384 --out runs/sae-l15-browser
    """
    checks.at_least("--tokens", tokens, 1)
    checks.at_least("--seq-len", seq_len, 2)
    checks.at_least("--k", k, 1)
    checks.at_least("--ablate-tokens", ablate_tokens, 2)
    checks.at_least("--threads", threads, 0)
    checks.corpus(data)
    sae = None
    if sae_dir is not None:
        sae, site, layer = _load_sae(sae_dir, site, layers)
        layers = str(layer)
        checks.at_least("--seq-len", seq_len, sae.cfg.exclude_first + 1)  # a window the SAE reads some of
    site = "mlp.act_out" if site is None else site
    layer_list = parse_range("--layers", "0" if layers is None else layers)
    chosen = None if neuron_ids is None else parse_range("--neurons", neuron_ids)
    checks.out_dir(out, overwrite, ("index.html", "neuron.html"))
    start = time.perf_counter()
    with cli_errors():
        import torch

        import actlab
        from actlab.data.windows import make_windows
        from actlab.interp.browser_data import BrowserDataError, build_site_data
        from actlab.report.neurons_html import NeuronSiteError, render_site

        if threads > 0:
            torch.set_num_threads(threads)
        quiet_libraries()
        net, tok = actlab.load_model(model)
        net.eval()
        corpus = actlab.load_corpus(data)
        windows = make_windows(corpus, tok, seq_len, tokens, split="calib")
        held_out = make_windows(corpus, tok, seq_len, ablate_tokens, split="eval") if ablate else None
        try:
            if sae is None:
                site_data = build_site_data(net, tok, windows, site, layer_list, k=k, neurons=chosen, ablate=ablate,
                                            ablate_windows=held_out, model_name=model, progress=True)
            else:
                from actlab.interp.browser_sae import build_sae_site_data

                site_data = build_sae_site_data(net, tok, windows, sae, k=k, latents=chosen, ablate=ablate,
                                                ablate_windows=held_out, model_name=model, progress=True)
            index = render_site(site_data, out, overwrite=overwrite)
        except (BrowserDataError, NeuronSiteError) as e:  # listed in actlab.errors too; caught here so either works
            fail(str(e))
    n = len(site_data["neurons"])
    summary = {"out": str(out), "index": str(index), "model": model, "site": site, "layers": layer_list,
               "sae": None if sae_dir is None else str(sae_dir), "kind": "neuron" if sae is None else "sae",
               "neurons": n, "tokens": site_data["n_tokens"], "k": k, "ablation": ablate,
               "seconds": round(time.perf_counter() - start, 2)}
    what = "neuron pages" if sae is None else f"SAE latent pages (of {sae.cfg.d_sae} latents)"
    console.print(f"wrote {n} {what} ({site}, layers {','.join(map(str, layer_list))}) from "
                  f"{site_data['n_tokens']} tokens: open {index.resolve().as_uri()}", highlight=False, soft_wrap=True)
    if json_out:
        print_json(summary)


def _load_sae(directory: Path, site: str | None, layers: str | None) -> tuple[Any, str, int]:
    """The SAE in ``directory`` and its site's kind and layer, after checking that --site / --layers, where
    given, name the SAE's own site."""
    from actlab.interp.sae import SAEError, SparseAutoencoder

    try:
        sae = SparseAutoencoder.load(directory)
    except SAEError as e:
        fail(str(e))
    own = sae.cfg.site
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", own)
    if m is None:
        fail(f"the SAE in {directory} reads {own or 'no site'!r}, not a layer's site (layers.N.KIND); "
             "it cannot be shown: pass an SAE trained with `actlab sae train --site layers.N.KIND`")
    layer, kind = int(m.group(1)), m.group(2)
    if site is not None and site not in (kind, own):
        fail(f"--site {site} disagrees with the SAE in {directory}, which reads {own}; drop --site "
             "(--sae implies it)")
    if layers is not None and parse_range("--layers", layers) != [layer]:
        fail(f"--layers {layers} disagrees with the SAE in {directory}, which reads layer {layer} ({own}); "
             "drop --layers (--sae implies it)")
    return sae, kind, layer
