"""Next-token NLL of each token window: the one scoring loop behind perplexity and the quality search.

``actlab.eval`` (perplexity) and ``actlab.sparsity`` (the budget's per-window interval) both score windows;
the loop lives here, below both, so neither imports the other.

Example:
    >>> import actlab, torch
    >>> model, _ = actlab.load_model("random:tiny-llama")
    >>> per_window_nll(model, torch.randint(3, 200, (2, 16))).shape
    torch.Size([2])
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from actlab.distributed import Dist, batch_shard, cat_ranks, is_multi, shard_windows

__all__ = ["lm_logits", "model_device", "per_window_nll"]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def lm_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` logits of one forward, without a KV cache for Hugging Face models."""
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        # No KV cache: a single forward pass never reuses it, and it would cost memory per layer.
        return model(input_ids, use_cache=False).logits
    return model(input_ids).logits


@torch.no_grad()
def per_window_nll(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int = 8,
    start: int = 1,
    reduction: str = "mean",
    on_batch: Callable[[int], None] | None = None,
    dist: Dist | None = None,
) -> torch.Tensor:
    """``[n_windows]`` float64 next-token NLL (nats) of each window over targets ``start..seq_len-1``.

    ``reduction`` is ``"mean"`` (per target) or ``"sum"``. Losses are computed one window at a time in
    float32, so peak extra memory is one window's logits. The model is put in eval mode for the call and
    its previous mode restored; ``on_batch(n)`` is called after each batch of ``n`` windows.

    ``dist`` (:mod:`actlab.distributed`): every rank passes the same ``windows`` and scores its share of the
    batches; every rank returns all ``n_windows`` values, in order, equal to one process's.

    Example:
        >>> nll = per_window_nll(model, windows, dist=actlab.distributed.setup())   # doctest: +SKIP
    """
    device = model_device(model)
    seq_len = windows.shape[1]
    mine = batch_shard(range(0, windows.shape[0], batch_size), dist)
    own = shard_windows(windows.shape[0], batch_size, dist)
    out = torch.empty(len(own), dtype=torch.float64)  # this rank's windows, own.start onwards
    was_training = model.training
    model.eval()
    try:
        for b in mine:
            batch = windows[b : b + batch_size].to(device=device, dtype=torch.long)  # [B, T]
            logits = lm_logits(model, batch)  # [B, T, V]
            for row in range(batch.shape[0]):
                pred = logits[row, start - 1 : seq_len - 1].float()  # [T - start, V]: predicts targets below
                out[b - own.start + row] = F.cross_entropy(pred, batch[row, start:seq_len], reduction=reduction).item()
            del logits
            if on_batch is not None:
                on_batch(batch.shape[0])
    finally:
        model.train(was_training)
    return cat_ranks(out, dist) if is_multi(dist) else out
