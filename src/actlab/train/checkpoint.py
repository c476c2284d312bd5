"""Training checkpoints: written atomically into ``OUT/checkpoints/step-N/``, the newest two kept.

A checkpoint holds what a resume needs to continue *the same run*: the trainable parameters (the LoRA
weights, or every weight for full fine-tuning) as safetensors, the optimizer state, the objective's state,
the RNG states, and ``state.json`` (step, tokens seen, the data position, the run's config and arguments,
and the history so far). It is written into a hidden temporary directory and renamed into place, so a run
killed while writing leaves the previous checkpoint intact; the files are recorded in ``OUT``'s manifest
(:func:`actlab.outputs.record_outputs`) as actlab's own. Tensor files are read back with
``torch.load(weights_only=True)``: nothing in a checkpoint can run code.

Example:
    >>> latest("runs/train")            # doctest: +SKIP
    PosixPath('runs/train/checkpoints/step-300')
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from actlab.outputs import record_outputs
from actlab.train.errors import TrainError

DIR = "checkpoints"
KEEP = 2
_NAME = re.compile(r"^step-(\d+)$")
_FILES = ("trainable.safetensors", "optimizer.pt", "objective.pt", "rng.pt", "state.json")


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint under ``out``, oldest first."""
    root = Path(out) / DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted((s, p) for s, p in found if (p / "state.json").is_file())


def latest(out: Path) -> Path | None:
    """The newest complete checkpoint of ``out``, or None."""
    found = checkpoints(out)
    return found[-1][1] if found else None


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the optimizer trains, by name (tied weights once)."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from (Python, NumPy, torch CPU and CUDA), in a weights-only loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out: Path, step: int, module: nn.Module, optimizer: torch.optim.Optimizer, objective_state: dict,
         state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write checkpoint ``step`` of the run into ``out`` atomically and prune to the newest ``keep``.

    The caller holds ``out``'s lock; ``state`` must be JSON-ready (``step`` is added).
    """
    from safetensors.torch import save_file

    root = Path(out) / DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({n: p.detach().cpu().contiguous() for n, p in trainable(module).items()},
                  tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(objective_state, tmp / "objective.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(dict(state, step=step), indent=1) + "\n")
        removed = []
        if final.exists():  # a rerun of the same step (an overwrite): swap, then drop the old one
            old = root / f".step-{step}.old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, p in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(f"{DIR}/{p.name}")
    rel = f"{DIR}/{final.name}"
    record_outputs(out, written=[f"{rel}/{f}" for f in _FILES], removed=[rel, *removed])
    return final


def load_state(path: Path) -> dict[str, Any]:
    """``state.json`` of checkpoint ``path``."""
    try:
        return json.loads((Path(path) / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainError(f"checkpoint {path} is unreadable ({e}); delete it to resume from an older one") from e


def restore(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict]:
    """Load checkpoint ``path`` into ``module`` and ``optimizer`` and restore the RNGs.

    Returns ``(state, objective_state)``.

    Raises:
        TrainError: the checkpoint's parameters do not match the module's trainable ones.
    """
    from safetensors.torch import load_file

    path = Path(path)
    state = load_state(path)
    try:
        saved = load_file(path / "trainable.safetensors")
        opt = torch.load(path / "optimizer.pt", weights_only=True)
        obj = torch.load(path / "objective.pt", weights_only=True)
        rng = torch.load(path / "rng.pt", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise TrainError(f"checkpoint {path} is unreadable ({e}); delete it to resume from an older one") from e
    params = trainable(module)
    if set(saved) != set(params):
        diff = sorted(set(saved) ^ set(params))
        raise TrainError(f"checkpoint {path} holds other trainable parameters than this run ({diff[:4]}"
                         f"{' ...' if len(diff) > 4 else ''}); resume with the config that wrote it")
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise TrainError(f"checkpoint {path}: {name} has shape {tuple(saved[name].shape)}, this run's "
                                 f"{tuple(p.shape)}; resume with the model and config that wrote it")
            p.copy_(saved[name])
    optimizer.load_state_dict(opt)
    set_rng_state(rng)
    return state, obj


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two nested dicts (missing counts)."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key} ({a!r} in the checkpoint, {b!r} now)")
    return diffs
