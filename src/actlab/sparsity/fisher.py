"""Diagonal Fisher information of every linear's output: how much an error there moves the model's output.

Masking an input adds ``e = W (x - mask(x))`` to a linear's output. To second order, the expected increase
of the KL divergence between the dense and the sparse model's next-token distributions is
``1/2 * sum_t e_t^T F e_t`` where ``F = E_{y ~ p}[grad log p(y) grad log p(y)^T]`` with respect to that
output. With the diagonal of ``F`` (one number per output channel, streamed over every token, no activation
stored) the cost of an error is ``sum_j F_j e_j^2``: a damage estimate that is comparable across layers and
projections, which plain output error is not (an error in layer 0's q projection and one in layer 29's down
projection do not cost the model the same).

Labels are sampled from the model's own prediction (the true Fisher, whose quadratic form is the KL), with a
fixed seed. Cost: one forward and one backward over the windows given; parameters get no gradient.

Position 0 is kept apart. The first token of every window is the attention sink: on SmolLM2-135M the k/v
projections' Fisher there is 60-260x that of any later token (a quarter to a half of their total), because
every later token reads its key and value. Averaged into one number per channel it would charge every
token's k/v errors with the sink's sensitivity; kept apart, each calibration row is charged at its own
position's rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def _no_param_grads(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    from actlab.models.adapters import get_adapter

    return (model(ids) if get_adapter(model).encoder else model(ids, use_cache=False)).logits


def output_fisher(
    model: nn.Module,
    windows: torch.Tensor,
    linears: list[str],
    batch_size: int = 2,
    seed: int = 0,
    progress: Any = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of each linear in ``linears`` (module paths): ``[2, out]``, per token, at position 0
    of a window (row 0) and at the later positions (row 1).

    Args:
        windows: ``[n, seq_len]`` calibration token ids.
        progress: optional callable ``progress(done_windows, total_windows)``.

    Example:
        >>> fisher = output_fisher(model, calib[:4], ["model.layers.0.mlp.down_proj"])   # doctest: +SKIP
        >>> fisher["model.layers.0.mlp.down_proj"].shape                                   # doctest: +SKIP
        torch.Size([2, 576])
    """
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    handles = []

    def make(path: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if out.requires_grad:

                def grad_hook(g: torch.Tensor) -> None:
                    g2 = g.detach().float().pow(2)  # [batch, seq, out]
                    both = torch.stack([g2[:, 0].sum(0), g2[:, 1:].sum((0, 1))])  # [2, out]
                    sums[path] = sums.get(path, 0) + both

                out.register_hook(grad_hook)

        return hook

    def embed_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out.detach().requires_grad_(True)

    gen = torch.Generator(device=device).manual_seed(seed)
    n, seq_len = windows.shape
    was_training = model.training
    model.eval()
    try:
        with _no_param_grads(model):
            handles.append(model.get_input_embeddings().register_forward_hook(embed_hook))
            for path in linears:
                handles.append(model.get_submodule(path).register_forward_hook(make(path)))
            for b in range(0, n, batch_size):
                batch = windows[b : b + batch_size].to(device)
                with torch.enable_grad():
                    logits = _logits(model, batch).float()  # [B, T, V]
                    with torch.no_grad():
                        probs = logits.softmax(-1).reshape(-1, logits.shape[-1])
                        sampled = torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # [B*T]
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), sampled, reduction="sum")
                    loss.backward()
                del logits, loss
                if progress is not None:
                    progress(min(b + batch_size, n), n)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per = torch.tensor([[float(n)], [float(n * (seq_len - 1)) or 1.0]])  # tokens at each position class
    return {p: (s.cpu() / per) for p, s in sums.items()}
