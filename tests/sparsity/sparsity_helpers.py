"""Helpers shared by the sparsity tests."""

from __future__ import annotations

import torch


def windows(model, n: int, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    """``[n, seq_len]`` random token ids (the tiny models are random too: text would add nothing)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (n, seq_len), generator=g)
