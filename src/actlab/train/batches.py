"""Which token windows each optimizer step, micro-batch and process trains on: a pure function of the seed.

One seeded permutation of the training windows is cut into consecutive *global batches* of
``batch_size * grad_accum * world_size`` windows, one per optimizer step. Process ``rank`` takes the
``rank``-th slice of ``batch_size * grad_accum`` windows of it and splits that into ``grad_accum``
micro-batches. So one process with ``grad_accum = 2a`` and two with ``grad_accum = a`` see the same windows
in every step, and a resumed run finds its place from the step number alone. Windows are never repeated:
a corpus smaller than the token budget is refused (:func:`plan_steps`), not cycled.

Example:
    >>> import torch
    >>> order = BatchOrder(n_windows=8, batch_size=2, grad_accum=2, world_size=1, seed=0)
    >>> [m.tolist() for m in order.micro_batches(0, rank=0)] == [order.perm[0:2].tolist(), order.perm[2:4].tolist()]
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from actlab.train.errors import TrainError


def window_ids(data: Any, what: str = "data") -> torch.Tensor:
    """The ``[N, seq_len]`` int64 tensor of ``data`` (a tensor or an ``actlab.data.windows.Windows``)."""
    ids = getattr(data, "ids", data)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TrainError(f"{what} must be a [n_windows, seq_len] integer tensor of token windows "
                         f"(actlab.data.windows.make_windows), got {shape}")
    return ids.long()


def plan_steps(n_windows: int, seq_len: int, tokens: int, batch_size: int, grad_accum: int,
               world_size: int) -> int:
    """Optimizer steps for a budget of ``tokens``; refuses data too small for one step or for the budget.

    Example:
        >>> plan_steps(n_windows=100, seq_len=16, tokens=1000, batch_size=4, grad_accum=1, world_size=1)
        15
    """
    per_step = batch_size * grad_accum * world_size  # windows per optimizer step
    if n_windows < per_step:
        raise TrainError(
            f"the training data has {n_windows} windows but one optimizer step needs {per_step} "
            f"(batch_size {batch_size} x grad_accum {grad_accum} x {world_size} process(es)); use a bigger "
            "corpus, a shorter --seq-len or a smaller batch"
        )
    have = n_windows * seq_len
    if tokens > have:
        raise TrainError(
            f"the training data has {have:,} tokens ({n_windows} windows of {seq_len}) but --tokens asks for "
            f"{tokens:,}; ask for fewer --tokens or use a bigger corpus (windows are not repeated)"
        )
    return max(1, tokens // (per_step * seq_len))


@dataclass
class BatchOrder:
    """The seeded order of windows: global batch of step ``s`` and each process's micro-batches in it."""

    n_windows: int
    batch_size: int
    grad_accum: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        self.perm = torch.randperm(self.n_windows, generator=gen)  # [N] window indices

    @property
    def per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def micro_batches(self, step: int, rank: int) -> list[torch.Tensor]:
        """Window indices of process ``rank``'s ``grad_accum`` micro-batches in step ``step`` (0-based)."""
        per_rank = self.batch_size * self.grad_accum
        start = step * self.per_step + rank * per_rank
        mine = self.perm[start : start + per_rank]
        if mine.numel() < per_rank:
            raise TrainError(f"step {step} runs past the training data ({self.n_windows} windows)")
        return list(mine.split(self.batch_size))
