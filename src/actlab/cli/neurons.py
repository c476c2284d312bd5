"""``actlab neurons``: a static neuron browser (opens from file://, no server) for some layers of one site."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from actlab.cli import checks
from actlab.cli.checks import parse_range
from actlab.cli.common import cli_errors, console, fail, print_json, quiet_libraries


def neurons(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    site: str = typer.Option("mlp.act_out", "--site", help="Site kind whose channels are shown, e.g. mlp.act_out, mlp.down_in, resid_out."),
    layers: str = typer.Option("0", "--layers", help="Layers to include: 0-3, 1,4,7 or 0-2,8 (one page per neuron of each: keep it small)."),
    neuron_ids: str = typer.Option(None, "--neurons", help="Only these neuron indices in each layer, e.g. 0-63 (default: all)."),
    data: str = typer.Option("default", "--data", "-d", help="Corpus: 'default' (built-in, offline), a text file, a directory, a .jsonl[:field] or hf:<name>."),
    tokens: int = typer.Option(16384, "--tokens", "-n", help="Tokens the records are made from (calibration split)."),
    seq_len: int = typer.Option(128, "--seq-len", "-L", help="Tokens per window."),
    k: int = typer.Option(20, "--k", help="Top-activating contexts kept per neuron."),
    ablate: bool = typer.Option(False, "--ablate", help="Also measure each neuron's ablation effect on next-token loss (one forward over --ablate-tokens per neuron)."),
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

    Example:

        actlab neurons --model smollm2-135m --site mlp.act_out --layers 0-3 --tokens 16384 --out runs/neurons
    """
    checks.at_least("--tokens", tokens, 1)
    checks.at_least("--seq-len", seq_len, 2)
    checks.at_least("--k", k, 1)
    checks.at_least("--ablate-tokens", ablate_tokens, 2)
    checks.at_least("--threads", threads, 0)
    checks.corpus(data)
    layer_list = parse_range("--layers", layers)
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
            site_data = build_site_data(net, tok, windows, site, layer_list, k=k, neurons=chosen, ablate=ablate,
                                        ablate_windows=held_out, model_name=model, progress=True)
            index = render_site(site_data, out, overwrite=overwrite)
        except (BrowserDataError, NeuronSiteError) as e:  # listed in actlab.errors too; caught here so either works
            fail(str(e))
    n = len(site_data["neurons"])
    summary = {"out": str(out), "index": str(index), "model": model, "site": site, "layers": layer_list,
               "neurons": n, "tokens": site_data["n_tokens"], "k": k, "ablation": ablate,
               "seconds": round(time.perf_counter() - start, 2)}
    console.print(f"wrote {n} neuron pages ({site}, layers {layers}) from {site_data['n_tokens']} tokens: "
                  f"open {index.resolve().as_uri()}", highlight=False, soft_wrap=True)
    if json_out:
        print_json(summary)
