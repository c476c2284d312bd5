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
    site: str = typer.Option(None, "--site", help="Site kind whose channels are shown, e.g. mlp.act_out (the default without --sae), mlp.down_in, resid_out. With --sae: only when given, beside the latents."),
    layers: str = typer.Option(None, "--layers", help="Layers of --site to include: 0-3, 1,4,7 or 0-2,8 (default 0, or with --sae the SAEs' layers; one page per neuron of each: keep it small)."),
    neuron_ids: str = typer.Option(None, "--neurons", help="Only these channel indices of --site in each layer, e.g. 0-63 (default: all)."),
    sae_dirs: list[Path] = typer.Option(None, "--sae", help="Also show the latents of this sparse autoencoder (a directory from `actlab sae train`, or SAELens's TopK / JumpReLU layout), at the site and layer it was trained on (repeatable). Without --site, only latents are shown."),
    latent_ids: str = typer.Option(None, "--latents", help=f"With --sae: these latent indices of each SAE, e.g. 0-63 (default: the first {DEFAULT_LATENTS})."),
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

    With --sae DIR the pages are (also) the SAE's latents, kind "sae" with ids like
    layers.15.resid_out.sae/17, at the site and layer the SAE was trained on: their records, top
    contexts with the latent's activation on every token, the LM-head tokens of each latent's decoder
    row (resid_out as is, mlp.act_out / mlp.down_in through the down projection) and with --ablate the
    loss change when the latent is removed. Give --site too and the index holds both kinds, to filter.

    Examples:

        actlab neurons --model smollm2-135m --site mlp.act_out --layers 0-3 --tokens 16384 --out runs/neurons

        actlab neurons --sae runs/sae-l15 --latents 0-63 --tokens 16384 --out runs/sae-l15-browser

        actlab neurons --sae runs/sae-l15 --site resid_out --neurons 0-63 --latents 0-63 --out runs/l15-both
    """
    checks.at_least("--tokens", tokens, 1)
    checks.at_least("--seq-len", seq_len, 2)
    checks.at_least("--k", k, 1)
    checks.at_least("--ablate-tokens", ablate_tokens, 2)
    checks.at_least("--threads", threads, 0)
    checks.corpus(data)
    saes = [_load_sae(d) for d in sae_dirs or []]
    if saes:
        checks.at_least("--seq-len", seq_len, max(sae.cfg.exclude_first for sae, _ in saes) + 1)
        twice = sorted({sae.cfg.site for sae, _ in saes if [x.cfg.site for x, _ in saes].count(sae.cfg.site) > 1})
        if twice:
            fail(f"two --sae directories read {twice[0]}; their pages would share ids: build one browser per SAE")
    elif latent_ids is not None:
        fail("--latents selects SAE latents; pass the SAE with --sae DIR (or drop --latents)")
    if site is None and not saes:
        site = "mlp.act_out"
    if site is None and (layers is not None or neuron_ids is not None):
        fail(f"{'--layers' if layers is not None else '--neurons'} selects channels of --site; with --sae alone "
             "the pages are latents: add --site KIND for channel pages too, or use --latents")
    default_layers = sorted({layer for _, layer in saes}) or [0]
    layer_list = default_layers if layers is None else parse_range("--layers", layers)
    chosen = None if neuron_ids is None else parse_range("--neurons", neuron_ids)
    latents = None if latent_ids is None else parse_range("--latents", latent_ids)
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
            if saes:
                from actlab.interp.sae_train import check_model

                for sae, _ in saes:  # an SAE of another model fails before the slow passes
                    check_model(sae, net)
            parts = []
            if site is not None:
                parts.append(build_site_data(net, tok, windows, site, layer_list, k=k, neurons=chosen, ablate=ablate,
                                             ablate_windows=held_out, model_name=model, progress=True))
            if saes:
                from actlab.interp.browser_sae import build_sae_site_data

                parts += [build_sae_site_data(net, tok, windows, sae, k=k, latents=latents, ablate=ablate,
                                              ablate_windows=held_out, model_name=model, progress=True)
                          for sae, _ in saes]
            site_data = {**parts[0], "site_kind": " + ".join(p["site_kind"] for p in parts),
                         "neurons": [n for p in parts for n in p["neurons"]]}
            index = render_site(site_data, out, overwrite=overwrite)
        except (BrowserDataError, NeuronSiteError) as e:  # listed in actlab.errors too; caught here so either works
            fail(str(e))
    n = len(site_data["neurons"])
    n_latents = sum(1 for x in site_data["neurons"] if x["kind"] == "sae")
    summary = {"out": str(out), "index": str(index), "model": model, "site": site,
               "layers": layer_list if site is not None else [], "sae": [str(d) for d in sae_dirs or []],
               "sae_sites": [sae.cfg.site for sae, _ in saes], "neurons": n - n_latents, "latents": n_latents,
               "pages": n, "tokens": site_data["n_tokens"], "k": k, "ablation": ablate,
               "seconds": round(time.perf_counter() - start, 2)}
    what = []
    if site is not None:
        what.append(f"{n - n_latents} neuron pages ({site}, layers {','.join(map(str, layer_list))})")
    if saes:
        what.append(f"{n_latents} SAE latent pages ({', '.join(sae.cfg.site for sae, _ in saes)})")
    console.print(f"wrote {' and '.join(what)} from {site_data['n_tokens']} tokens: open {index.resolve().as_uri()}",
                  highlight=False, soft_wrap=True)
    if json_out:
        print_json(summary)


def _load_sae(directory: Path) -> tuple[Any, int]:
    """The SAE in ``directory`` and its site's layer (an SAE of a site outside the layers is refused)."""
    from actlab.interp.sae import SAEError, SparseAutoencoder

    try:
        sae = SparseAutoencoder.load(directory)
    except SAEError as e:
        fail(str(e))
    m = re.fullmatch(r"layers\.(\d+)\..+", sae.cfg.site)
    if m is None:
        fail(f"the SAE in {directory} reads {sae.cfg.site or 'no site'!r}, not a layer's site (layers.N.KIND); "
             "it cannot be shown: pass an SAE trained with `actlab sae train --site layers.N.KIND`")
    return sae, int(m.group(1))
