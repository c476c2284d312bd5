"""A model's identity for plans: architecture, shapes and a hash of a cheap deterministic weight sample.

Hashing 500 MB of weights would cost seconds; a strided sample of each sparsifiable linear (plus the
embedding) tells fine-tunes and different checkpoints apart just as well, and is device-independent
(values are read back as float32 on the CPU).

Example:
    >>> fp = model_fingerprint(model)                       # doctest: +SKIP
    >>> sorted(fp)                                          # doctest: +SKIP
    ['architecture', 'hidden_size', 'linears', 'num_layers', 'weights_sha256']
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from actlab.models.adapters import get_adapter, linear_weight
from actlab.models.offload import tensor_of
from actlab.models.wrappers import base_layer, unwrap
from actlab.sparsity.groups import sparsifiable_linears

#: values hashed per tensor
SAMPLE = 4096


def _sample(t: torch.Tensor) -> bytes:
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE)
    return flat[::step][:SAMPLE].float().cpu().contiguous().numpy().tobytes()


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Architecture, layer count, shapes of the sparsifiable linears and a sha256 of a weight sample."""
    ad = get_adapter(model)
    model = unwrap(model)[0]  # the same plan fits the model inside torch.compile/DDP/PEFT
    h = hashlib.sha256()
    linears = {}
    for path in sparsifiable_linears(model):
        w = linear_weight(_unwrapped(model.get_submodule(path)))
        linears[path] = list(w.shape)
        h.update(path.encode())
        h.update(_sample(w))
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        h.update(_sample(tensor_of(emb, "weight")))  # read from the offload store if offloaded
    config = getattr(model, "config", None)
    return {
        "architecture": getattr(config, "model_type", type(model).__name__),
        "num_layers": len(model.get_submodule(ad.layers)),
        "hidden_size": getattr(config, "hidden_size", None),
        "linears": linears,
        "weights_sha256": h.hexdigest(),
    }


def _unwrapped(module: nn.Module) -> nn.Module:
    """The original linear inside a PEFT LoRA layer (a fine-tune's adapters do not change the base model).

    An applied plan changes no module (masks are hooks, thresholds buffers of their own module), so the
    fingerprint is the same before and after ``apply_``.
    """
    return base_layer(module)


def fingerprint_mismatch(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """Why two fingerprints differ, in words, or None if they match."""
    for key in ("architecture", "num_layers", "hidden_size"):
        if expected.get(key) != actual.get(key):
            return f"{key} is {actual.get(key)!r}, the plan was made for {expected.get(key)!r}"
    exp_lin, act_lin = expected.get("linears", {}), actual.get("linears", {})
    if set(exp_lin) != set(act_lin):
        return "the model's linear layers differ from the plan's"
    for path, shape in exp_lin.items():
        if list(act_lin[path]) != list(shape):
            return f"{path} has shape {act_lin[path]}, the plan expects {shape}"
    if expected.get("weights_sha256") != actual.get("weights_sha256"):
        return "same architecture and shapes but different weights (another checkpoint or a fine-tune)"
    return None
