"""``actlab steer``: a steering vector (difference of means over contrastive pairs), saved and exported."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, console, fail, print_json, quiet_libraries


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Contrastive pairs from a JSONL file: one ``{"positive": ..., "negative": ...}`` or ``[pos, neg]`` a line."""
    if not path.is_file():
        fail(f"--pairs {path} does not exist; give a .jsonl file with one {{\"positive\": ..., \"negative\": ...}} a line")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"--pairs {path} line {n} is not JSON ({e.msg}); write one pair a line")
        if isinstance(row, dict):
            row = [row.get("positive"), row.get("negative")]
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(t, str) and t for t in row)):
            fail(f"--pairs {path} line {n} must be {{\"positive\": text, \"negative\": text}} or [text, text], "
                 "both non-empty")
        pairs.append((row[0], row[1]))
    if not pairs:
        fail(f"--pairs {path} holds no prompt pairs: write one {{\"positive\": ..., \"negative\": ...}} a line")
    return pairs


def steer(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    pairs: Path = typer.Option(..., "--pairs", help='JSONL of contrastive pairs: {"positive": "...", "negative": "..."} a line.'),
    layers: str = typer.Option(..., "--layers", help="Layers to compute a direction for: 6-10, 6,8 or 1-3,7."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for steering.json and directions.safetensors."),
    position: str = typer.Option("last", "--position", help="Read each text's residual stream at its last token (last) or averaged over tokens (mean)."),
    gguf: Path = typer.Option(None, "--gguf", help="Also write a llama.cpp control vector (GGUF) here, e.g. love.gguf."),
    overwrite: bool = typer.Option(False, "--overwrite", help=checks.OVERWRITE_HELP),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Compute a steering vector: the mean residual stream of the positive texts minus the negative ones.

    Each layer's direction is the difference of means at that layer's output (resid_out), which
    `actlab generate --steer OUT --steer-scale X` adds back, times X, while generating (negative X
    steers the other way). With --gguf the vector is also written in llama.cpp's control-vector
    layout (tensors direction.<layer>, the same layer numbers; llama.cpp cannot steer layer 0).

    Example:

        actlab steer --pairs pairs.jsonl --layers 6-10 --out runs/love --gguf runs/love.gguf

    with pairs.jsonl lines such as {"positive": "I love this film", "negative": "I hate this film"}.
    """
    checks.at_least("--threads", threads, 0)
    checks.one_of("--position", position, ("last", "mean"))
    chosen = checks.parse_range("--layers", layers)
    texts = read_pairs(pairs)
    if gguf is not None and gguf.suffix.lower() != ".gguf":
        fail(f"--gguf {gguf} must end in .gguf")
    if gguf is not None and 0 in chosen:
        fail("--gguf: llama.cpp control vectors cannot steer layer 0; choose --layers from 1 (e.g. 1-10)")
    checks.out_dir(out, overwrite, ("steering.json", "directions.safetensors"))
    with cli_errors():
        import torch

        import actlab
        from actlab.interp.steering import SteeringError, steering_vector

        try:
            if threads > 0:
                torch.set_num_threads(threads)
            quiet_libraries()
            net, tok = actlab.load_model(model)
            vec = steering_vector(net, tok, texts, layers=chosen, position=position, progress=True)
            vec.model_name = vec.model_name or model
            vec.save(out, overwrite=overwrite)
            if gguf is not None:
                from actlab.interp.control_vector import export_control_vector

                export_control_vector(vec, gguf)
        except SteeringError as e:  # also in actlab.errors' registry; caught here for a clean line
            fail(str(e))
    norms = {i: float(vec.directions[i].norm()) for i in vec.layers}
    console.print(f"steering vector from {len(texts)} pairs, layers {vec.layers} (d_model {vec.d_model}): "
                  + ", ".join(f"|v{i}| {n:.3g}" for i, n in norms.items()), highlight=False)
    console.print(f"saved: [bold]{out}[/]" + (f"  llama.cpp control vector: {gguf}" if gguf else "")
                  + f"  use: actlab generate --steer {out} --steer-scale 2 \"...\"", highlight=False)
    if json_out:
        print_json({"out": str(out), "gguf": str(gguf) if gguf else None, "layers": vec.layers,
                    "d_model": vec.d_model, "n_pairs": vec.n_pairs, "position": position,
                    "norms": {str(i): n for i, n in norms.items()}})
