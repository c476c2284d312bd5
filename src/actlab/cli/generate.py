"""``actlab generate``: text from a model, optionally with a sparsity plan applied (masking path)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, fail, print_json, quiet_libraries


def generate(
    prompt: str = typer.Argument(..., help="The prompt text."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    plan: Path = typer.Option(None, "--plan", help="Plan directory from `actlab calibrate`, or a Hub repo id (owner/name); applied with actlab.apply_."),
    steer: Path = typer.Option(None, "--steer", help="Steering vector directory from `actlab steer`, added to the residual stream while generating."),
    steer_scale: float = typer.Option(1.0, "--steer-scale", help="Multiple of the steering vector to add (negative steers the other way; with --steer)."),
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
    if steer is not None and not Path(steer).expanduser().exists():
        fail(f"--steer {steer} does not exist; pass a directory written by `actlab steer`")
    if not abs(steer_scale) < float("inf"):
        fail(f"--steer-scale must be a finite number, got {steer_scale}")
    with cli_errors():
        import torch

        import actlab
        from actlab.interp.steering import SteeringError, SteeringVector, apply_steering

        loaded = actlab.SparsityPlan.from_pretrained(plan) if plan is not None else None
        try:
            vector = SteeringVector.load(steer) if steer is not None else None
        except SteeringError as e:  # also in actlab.errors' registry; caught here for a clean line
            fail(str(e))
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
        try:
            if vector is not None:
                vector.check(net)  # a vector of another model fails here, as one line
        except SteeringError as e:
            fail(str(e))
        steering = apply_steering(net, vector, steer_scale, check=False) if vector is not None else nullcontext()
        with torch.no_grad(), steering:
            out = net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               pad_token_id=pad, **kwargs)
        completion = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    if json_out:
        print_json({"prompt": prompt, "completion": completion, "plan": str(plan) if plan else None,
                    "steer": str(steer) if steer else None, "steer_scale": steer_scale if steer else None,
                    "new_tokens": int(out.shape[1] - ids.shape[1])})
    else:
        typer.echo(prompt + completion)
