"""``actlab generate``: text from a model, optionally with a sparsity plan applied (masking path)."""

from __future__ import annotations

from pathlib import Path

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, fail, print_json, quiet_libraries


def generate(
    prompt: str = typer.Argument(..., help="The prompt text."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    plan: Path = typer.Option(None, "--plan", help="Plan directory from `actlab calibrate` (applied with actlab.apply_)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Tokens to generate."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature (with --sample)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (with --sample)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (prompt, completion, plan) on stdout."),
) -> None:
    """Generate a completion with Hugging Face generate, greedy by default.

    With --plan the plan's masks are installed first, so the text shows what the sparsified model
    says; every generated token is sparsified.

    Example:

        actlab generate --plan plans/teal40 "The history of the Python language"
    """
    checks.at_least("--max-new-tokens", max_new_tokens, 1)
    if sample:
        checks.positive("--temperature", temperature)
    if not -(2**63) <= seed < 2**64:  # torch.manual_seed's range
        fail(f"--seed must be in [-2**63, 2**64), got {seed}")
    if not prompt:
        fail("the prompt is empty: give the text to continue")
    checks.plan_dir(plan)
    with cli_errors():
        import torch

        import actlab

        loaded = actlab.SparsityPlan.load(plan) if plan is not None else None
        quiet_libraries()
        net, tok = actlab.load_model(model)
        if loaded is not None:
            actlab.apply_(net, loaded)
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            fail("the prompt is empty after tokenisation")
        torch.manual_seed(seed)
        kwargs = {"do_sample": True, "temperature": temperature} if sample else {"do_sample": False}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               pad_token_id=pad, **kwargs)
        completion = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    if json_out:
        print_json({"prompt": prompt, "completion": completion, "plan": str(plan) if plan else None,
                    "new_tokens": int(out.shape[1] - ids.shape[1])})
    else:
        typer.echo(prompt + completion)
