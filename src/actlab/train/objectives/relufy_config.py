"""``RelufyConfig``: ReLU-fication (an activation swap, ProSparse's progressive L1, an optional KL term), objective
``relufy``; and the L1 weight's schedule.

Example:
    >>> from actlab.train.config import config_from_dict
    >>> cfg = RelufyConfig(activation="drelu", kl=0.5)
    >>> config_from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from actlab.functions.swaps import SWAP_KINDS, SwapError, check_swap
from actlab.train.config import TrainConfig, is_number, register_config
from actlab.train.errors import TrainError


def l1_lambda(step: int, total_steps: int, peak: float, warmup: float = 0.1, start_frac: float = 0.1,
              stages: int = 1) -> float:
    """ProSparse's L1 weight at optimizer step ``step`` (0-based) of ``total_steps``.

    The first ``round(warmup * total_steps)`` steps hold ``start = start_frac * peak``; the rest are split into
    ``stages`` equal stages, stage ``k`` rising from ``λ_k`` to ``λ_{k+1}`` on a quarter sine, where
    ``λ_j = start + (peak - start) * j / stages``; the last step has ``peak``.

    Example:
        >>> [round(l1_lambda(s, 10, 1.0, warmup=0.2, start_frac=0.0), 3) for s in (0, 1, 2, 5, 9)]
        [0.0, 0.0, 0.195, 0.707, 1.0]
    """
    if total_steps < 1 or not 0 <= step < total_steps:
        raise ValueError(f"step {step} is outside 0..{total_steps - 1}")
    start = start_frac * peak
    w = int(round(warmup * total_steps))
    if step < w:
        return start
    p = (step - w + 1) / (total_steps - w)  # in (0, 1], 1 at the last step
    k = min(math.ceil(p * stages) - 1, stages - 1)
    q = p * stages - k  # progress within stage k, in (0, 1]
    lo = start + (peak - start) * k / stages
    hi = start + (peak - start) * (k + 1) / stages
    return lo + (hi - lo) * math.sin(math.pi * q / 2)


@register_config
@dataclass(frozen=True)
class RelufyConfig(TrainConfig):
    """ReLU-fication: swap the MLP activation, then LM loss + λ(step)·mean|a| + ``kl``·KL(original ‖ student).

    ``a`` is the MLP intermediate: the activation's output (``mlp.act_out``), or for ``drelu`` the down
    projection's input (``mlp.down_in``, where dReLU's two ReLUs meet), averaged per layer then over layers.

    Attributes:
        activation: ``relu``, ``fatrelu``, ``relu2`` or ``drelu`` (``actlab.functions.swaps``).
        theta: FATReLU's threshold (``fatrelu`` only).
        relu_after_norms: also ReLU the norm outputs read by attention and the MLP (ReLU Strikes Back, stage 2).
        l1: the peak L1 weight λ (ProSparse), reached at the last step; 0 turns the L1 term off. The term is
            λ x mean|a| (per layer, then over layers), so λ does not scale with the model's width.
        l1_warmup: fraction of the steps at the constant small λ ``l1_start_frac * l1`` before it rises.
        l1_start_frac: the warm-up λ as a fraction of ``l1``.
        l1_stages: stages after the warm-up, each rising on a quarter sine (:func:`l1_lambda`).
        kl: weight of KL(original ‖ student) toward the unswapped model's logits (ReluLLaMA); 0 = off.
            With LoRA the original is the base model with the adapters disabled and the old activation put
            back (no copy); full fine-tuning keeps a frozen copy.
        fatrelu_final_theta: if set, the saved model runs FATReLU with this threshold (ProSparse's last
            stage, applied after training; the loop's final evaluation is before it); relu/fatrelu only.
    """

    objective: ClassVar[str] = "relufy"

    activation: str = "relu"
    theta: float = 0.0
    relu_after_norms: bool = False
    # SmolLM2-135M, 20k tokens, LoRA r=8, lr 5e-4: λ = 0 / 1 / 10 -> exact zeros 66.3 / 66.3 / 66.7% at eval
    # perplexity 338 / 342 / 341: 10 is the smallest peak with a measurable effect and no cost there
    l1: float = 10.0
    l1_warmup: float = 0.1
    l1_start_frac: float = 0.1
    l1_stages: int = 1
    kl: float = 0.0
    fatrelu_final_theta: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            check_swap(self.activation, self.theta, self.relu_after_norms)
        except SwapError as e:
            raise TrainError(f"relufy: {e}") from e
        for name in ("l1", "kl"):
            if not is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise TrainError(f"relufy: {name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not is_number(self.l1_warmup) or not 0.0 <= self.l1_warmup < 1.0:
            raise TrainError(f"relufy: l1_warmup is a fraction of the steps in [0, 1), got {self.l1_warmup!r}")
        if not is_number(self.l1_start_frac) or not 0.0 <= self.l1_start_frac <= 1.0:
            raise TrainError(f"relufy: l1_start_frac must be in [0, 1], got {self.l1_start_frac!r}")
        if isinstance(self.l1_stages, bool) or not isinstance(self.l1_stages, int) or self.l1_stages < 1:
            raise TrainError(f"relufy: l1_stages must be an integer >= 1, got {self.l1_stages!r}")
        if self.fatrelu_final_theta is not None:
            if not is_number(self.fatrelu_final_theta) or self.fatrelu_final_theta < 0:
                raise TrainError("relufy: fatrelu_final_theta must be a finite number >= 0 (or null), "
                                 f"got {self.fatrelu_final_theta!r}")
            if self.activation not in ("relu", "fatrelu"):
                raise TrainError(f"relufy: fatrelu_final_theta replaces a ReLU gate by FATReLU; activation "
                                 f"{self.activation!r} cannot take it (use relu or fatrelu)")


__all__ = ["SWAP_KINDS", "RelufyConfig", "l1_lambda"]
