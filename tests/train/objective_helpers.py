"""Drive an objective handler by hand, as the loop does: prepare -> active + forward -> loss -> backward."""

from __future__ import annotations

import torch

from actlab.train import handler_for


def windows(n: int = 4, seq_len: int = 32, seed: int = 0, vocab: int = 512) -> torch.Tensor:
    """``[n, seq_len]`` random token ids (the tiny models are random too: text would add nothing)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seq_len), generator=g)


def drive(model, config, ids: torch.Tensor, steps: int = 20, lr: float = 1e-2, calib=None):
    """Train ``steps`` AdamW steps on ``ids`` (one micro-batch a step); returns (handler, module, history).

    ``history`` holds one dict per step: ``loss`` (the model's LM loss), ``total`` (the objective's
    loss) and the objective's metrics.
    """
    obj = handler_for(config)
    trained = obj.prepare(model, ids if calib is None else calib)
    obj.total_steps = steps
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history = []
    for step in range(steps):
        obj.step = step
        loss, metrics, lm = one_step(obj, trained, ids)
        opt.step()
        opt.zero_grad()
        history.append({"loss": lm, "total": float(loss), **metrics})
    return obj, trained, history


def one_step(obj, trained, ids: torch.Tensor):
    """One forward + backward through the handler; returns (loss, metrics, LM loss)."""
    with obj.active(trained):
        outputs = trained(input_ids=ids, labels=ids)
    loss, metrics = obj.loss(trained, {"input_ids": ids, "labels": ids}, outputs)
    loss.backward()
    return loss.detach(), metrics, float(outputs.loss.detach())


def grads_only_in_lora(trained) -> tuple[list[str], list[str]]:
    """(names of non-LoRA parameters that got a gradient, names of LoRA B weights with a non-zero one)."""
    leaked = [n for n, p in trained.named_parameters() if p.grad is not None and "lora_" not in n]
    moved = [n for n, p in trained.named_parameters() if "lora_B" in n and p.grad is not None and p.grad.abs().sum() > 0]
    return leaked, moved
