"""``actlab patch``: activation patching between a clean and a corrupted prompt, as a layer × site map."""

from __future__ import annotations

from pathlib import Path

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, console, fail, print_json, quiet_libraries

MAP_JSON, MAP_PNG = "patch_map.json", "patch_map.png"


def patch(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    clean: str = typer.Option(..., "--clean", help="The clean prompt, e.g. 'The Eiffel Tower is in the city of'."),
    corrupt: str = typer.Option(..., "--corrupt", help="The corrupted prompt: same number of tokens, another answer."),
    answer: str = typer.Option(..., "--answer", help="The clean prompt's answer, one token (mind the leading space: ' Paris')."),
    wrong: str = typer.Option(..., "--wrong", help="The corrupted prompt's answer, one token (e.g. ' Rome')."),
    sites: str = typer.Option("resid_out,mlp.down_in,attn.o_in", "--sites", help="Site kinds to patch, comma-separated."),
    per_position: bool = typer.Option(False, "--per-position", help="Also patch each position on its own (a layer × position map per site kind)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write patch_map.json and patch_map.png here."),
    overwrite: bool = typer.Option(False, "--overwrite", help=checks.OVERWRITE_HELP),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
    json_out: bool = typer.Option(False, "--json", help="Print the map as one JSON object on stdout."),
) -> None:
    """Which layers and sites carry the answer: patch clean activations into the corrupted run.

    Runs the corrupted prompt once per layer × site kind (× position with --per-position) with that
    site's activation taken from the clean run, and reports the share of the logit difference
    logit(answer) - logit(wrong) at the last token that each patch restores: 1 is the clean run,
    0 the corrupted one. The two prompts must have the same number of tokens, and each answer
    must be a single token. Patched at every position, resid_out restores 1 at every layer by
    construction; --per-position shows where (which token, which layer) the information sits.

    Example:

        actlab patch --clean "The Eiffel Tower is in the city of" --corrupt "The Colosseum is in the city of" --answer " Paris" --wrong " Rome" --out runs/patch
    """
    checks.at_least("--threads", threads, 0)
    for name, text in (("--clean", clean), ("--corrupt", corrupt), ("--answer", answer), ("--wrong", wrong)):
        if not text:
            fail(f"{name} is empty: give the text")
    kinds = [k.strip() for k in sites.split(",") if k.strip()]
    if not kinds:
        fail("--sites is empty: name site kinds, e.g. resid_out,mlp.down_in,attn.o_in")
    if out is not None:
        checks.out_dir(out, overwrite, (MAP_JSON, MAP_PNG))
    with cli_errors():
        import torch

        import actlab
        from actlab.activations.sites import KINDS, SiteError
        from actlab.interp.patching import PatchingError, draw_patch_map, patch_map, single_token

        try:
            unknown = [k for k in kinds if k not in KINDS]
            if unknown:
                raise SiteError(f"unknown site kind {unknown[0]!r} in --sites; choose from {', '.join(KINDS)}")
            if threads > 0:
                torch.set_num_threads(threads)
            quiet_libraries()
            net, tok = actlab.load_model(model)
            clean_ids = tok(clean, return_tensors="pt")["input_ids"]
            corrupt_ids = tok(corrupt, return_tensors="pt")["input_ids"]
            if clean_ids.shape[1] != corrupt_ids.shape[1]:
                raise PatchingError(
                    f"--clean is {clean_ids.shape[1]} tokens and --corrupt {corrupt_ids.shape[1]}: patching needs "
                    "the same length; reword one (e.g. a subject with as many tokens)")
            pm = patch_map(net, clean_ids, corrupt_ids, single_token(tok, answer, "answer"),
                           single_token(tok, wrong, "wrong"), sites=kinds, per_position=per_position, tok=tok,
                           progress=True)
            if out is not None:
                from actlab.outputs import staged_output, write_json_atomic

                with staged_output(out, overwrite=overwrite) as tmp:
                    write_json_atomic(tmp / MAP_JSON, {**pm.to_dict(), "clean": clean, "corrupt": corrupt,
                                                       "answer_text": answer, "wrong_text": wrong, "model": model})
                    draw_patch_map(pm, tmp / MAP_PNG)
        except (PatchingError, SiteError) as e:  # also in actlab.errors' registry; caught here for a clean line
            fail(str(e))
    console.print(f"logit({answer!r}) - logit({wrong!r}): clean {pm.logit_diff_clean:.3f}, corrupted "
                  f"{pm.logit_diff_corrupt:.3f}", highlight=False)
    if not per_position:
        console.print("layer  " + "  ".join(f"{k:>12}" for k in pm.kinds), highlight=False)
        for li, layer in enumerate(pm.layers):
            console.print(f"{layer:>5}  " + "  ".join(f"{float(v):>12.3f}" for v in pm.restored[li]), highlight=False)
    # patched at every position, resid_out is the clean run's whole state: 1 at every layer, so it ranks nothing
    informative = pm.kinds if per_position else [k for k in pm.kinds if k != "resid_out"] or pm.kinds
    best = pm.best(5, informative)
    console.print("most restoring: " + ", ".join(
        f"{b['site']}" + (f"@{b['position']}" if b["position"] is not None else "") + f" {b['restored']:.3f}"
        for b in best), highlight=False)
    if out is not None:
        console.print(f"map: [bold]{out / MAP_PNG}[/]  data: {out / MAP_JSON}", highlight=False)
    if json_out:
        print_json({**pm.to_dict(), "best": best, "out": str(out) if out is not None else None})
