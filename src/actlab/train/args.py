"""The loop's settings (:class:`TrainArgs`) and what a run returns (:class:`TrainResult`).

Both are re-exported by :mod:`actlab.train.loop` (and as ``actlab.TrainArgs`` / ``actlab.TrainResult``).

Example:
    >>> TrainArgs(tokens=1024, seq_len=64).to_dict()["batch_size"]
    4
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from actlab.train import precision
from actlab.train.errors import TrainError

#: arguments that change only what is reported, so a resume may change them
REPORTING = ("log_every", "eval_every", "checkpoint_every")


@dataclass(frozen=True)
class TrainArgs:
    """The loop's settings (what an objective's config does not decide).

    Attributes:
        tokens: training tokens in all (``steps = tokens // (batch_size*seq_len*grad_accum*processes)``).
        seq_len: window length; the data's windows must have it.
        batch_size, grad_accum: windows per micro-batch and micro-batches per optimizer step (per process).
        lr, warmup, min_lr_ratio: peak AdamW rate, warmup as a fraction of the steps, cosine floor / lr.
        weight_decay, max_grad_norm: AdamW decay; gradient clipping (0 = none).
        precision: ``auto`` (bf16 autocast where the hardware has bf16), ``fp32`` or ``bf16``.
        seed: batch order, RNG of every step (and LoRA's initialisation).
        log_every: steps between log rows; eval_every: steps between evaluations (0 = start and end only).
        eval_tokens: tokens of ``eval_data`` each evaluation scores; checkpoint_every: steps (0 = none).
        calib_tokens: tokens of the training data ``Objective.prepare`` gets for calibration.
    """

    tokens: int = 200_000
    seq_len: int = 256
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    warmup: float = 0.06
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    eval_tokens: int = 16384
    checkpoint_every: int = 0
    calib_tokens: int = 16384

    def __post_init__(self) -> None:
        positive = ("tokens", "batch_size", "grad_accum", "log_every", "eval_tokens")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("eval_every", "checkpoint_every", "calib_tokens",
                                                      "weight_decay", "max_grad_norm") if getattr(self, k) < 0]
        if bad:
            raise TrainError(f"invalid training arguments: {', '.join(bad)} (counts must be positive, "
                             "intervals, weight decay and clipping non-negative)")
        if self.seq_len < 2:
            raise TrainError(f"seq_len must be at least 2 (got {self.seq_len}); nothing to predict")
        if not self.lr > 0 or not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise TrainError(f"need lr > 0, warmup in [0, 1) and min_lr_ratio in [0, 1]; got lr={self.lr}, "
                             f"warmup={self.warmup}, min_lr_ratio={self.min_lr_ratio}")
        if self.precision not in precision.PRECISIONS:
            raise TrainError(f"unknown precision {self.precision!r}; choose one of "
                             f"{', '.join(precision.PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """The trained plain Hugging Face model, the log rows (as in ``log.jsonl``) and the output directory."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None
