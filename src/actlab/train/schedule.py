"""The learning-rate schedule: linear warmup, then cosine decay to a floor; a pure function of the step.

The loop sets every parameter group's learning rate from :func:`lr_at` before each optimizer step, so the
schedule's whole state is the step number (a resume restores it by restoring the step).

Example:
    >>> [round(lr_at(s, total_steps=10, lr=1.0, warmup_steps=2, min_lr_ratio=0.1), 3) for s in (0, 1, 2, 9)]
    [0.5, 1.0, 1.0, 0.1]
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup: float) -> int:
    """Warmup length in steps for a ``warmup`` fraction of ``total_steps`` (rounded; 0 for no warmup).

    Example:
        >>> warmup_steps(100, 0.06)
        6
    """
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {warmup}")
    return int(round(warmup * total_steps))


def lr_at(step: int, total_steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``.

    Steps ``0 .. warmup_steps-1`` rise linearly to ``lr`` (step ``i`` gets ``lr * (i+1) / warmup_steps``, so the
    first step never has a zero rate); the remaining steps follow a half cosine from ``lr`` down to
    ``min_lr_ratio * lr``, reached at the last step.

    Example:
        >>> lr_at(0, total_steps=1, lr=2e-4, warmup_steps=0, min_lr_ratio=0.1)
        0.0002
    """
    if total_steps < 1 or not 0 <= step < total_steps:
        raise ValueError(f"step {step} is outside 0..{total_steps - 1}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay = total_steps - 1 - warmup_steps  # steps after the peak
    if decay <= 0:
        return lr
    progress = (step - warmup_steps) / decay  # 0 at the peak, 1 at the last step
    floor = min_lr_ratio * lr
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
