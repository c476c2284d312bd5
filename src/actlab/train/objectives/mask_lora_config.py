"""``MaskLoraConfig``: train with a sparsity plan applied (CATS-style recovery), objective ``mask-lora``.

Example:
    >>> from actlab.train.config import config_from_dict
    >>> cfg = MaskLoraConfig(plan="plans/teal50", gradient="hard", recalibrate_every=50, kl=1.0)
    >>> config_from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from actlab.train.config import TrainConfig, is_number, register_config
from actlab.train.errors import TrainError

if TYPE_CHECKING:
    from actlab.sparsity.plan import SparsityPlan

#: how the gradient crosses a mask: straight through the dropped channels, or zero there (CATS)
GRADIENTS = ("ste", "hard")


def _is_plan(obj: Any) -> bool:
    from actlab.sparsity.plan import SparsityPlan

    return isinstance(obj, SparsityPlan)


@register_config
@dataclass(frozen=True)
class MaskLoraConfig(TrainConfig):
    """Apply ``plan`` during training, so LoRA (or full fine-tuning) learns to live with its masks.

    Attributes:
        plan: a plan directory (``actlab calibrate --out``; what JSON round-trips) or a
            :class:`~actlab.sparsity.plan.SparsityPlan` passed at run time. It must be made for the
            model trained; the output gets the same plan re-fingerprinted for the merged weights.
        gradient: ``ste`` (straight-through: the dropped channels pass the gradient as if kept) or
            ``hard`` (zero gradient where masked, CATS's choice).
        recalibrate_every: 0 = keep the plan's thresholds; N = re-run the plan's method at its
            sparsity every N optimizer steps on the loop's calibration windows (threshold plans only).
        kl: weight of KL(teacher ‖ student) added to the LM loss (:mod:`actlab.train.distill`); 0 = off.
        teacher: the model distilled from when ``kl > 0``: empty = the model as handed to training, unmasked
            (a frozen copy), or a model directory with the same vocabulary, e.g. the dense fine-tuned model
            of the same text (recovery by distillation: the teacher's own training is then part of the cost).
    """

    objective: ClassVar[str] = "mask-lora"

    plan: Any = ""
    gradient: str = "ste"
    recalibrate_every: int = 0
    kl: float = 0.0
    teacher: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.plan, os.PathLike):
            object.__setattr__(self, "plan", os.fspath(self.plan))
        if isinstance(self.plan, dict) and self.plan.get("in_memory"):
            raise TrainError("mask-lora: this config's plan was passed in memory and never saved; save it "
                             "(plan.save(DIR)) and set plan to DIR")
        if not (isinstance(self.plan, str) and self.plan) and not _is_plan(self.plan):
            raise TrainError("mask-lora: plan must name a plan directory (written by `actlab calibrate --out DIR` "
                             f"or plan.save(DIR)) or be a SparsityPlan, got {self.plan!r:.80}")
        if self.gradient not in GRADIENTS:
            raise TrainError(f"mask-lora: unknown gradient {self.gradient!r}; choose one of {', '.join(GRADIENTS)}")
        if isinstance(self.recalibrate_every, bool) or not isinstance(self.recalibrate_every, int) \
                or self.recalibrate_every < 0:
            raise TrainError(f"mask-lora: recalibrate_every must be an integer >= 0 (0 = never), "
                             f"got {self.recalibrate_every!r}")
        if not is_number(self.kl) or self.kl < 0:
            raise TrainError(f"mask-lora: kl must be a finite number >= 0 (0 = no distillation), got {self.kl!r}")
        if isinstance(self.teacher, os.PathLike):
            object.__setattr__(self, "teacher", os.fspath(self.teacher))
        if not isinstance(self.teacher, str):
            raise TrainError(f"mask-lora: teacher must name a model (a directory, alias or hub id), got "
                             f"{self.teacher!r:.80}")
        if self.teacher and not self.kl:
            raise TrainError(f"mask-lora: teacher {self.teacher} is only used by the KL term; set kl > 0 "
                             "(e.g. kl=1) or leave teacher empty")

    def load_plan(self) -> SparsityPlan:
        """The plan: loaded from its directory (checked: a bad plan fails here, before a model loads).

        Raises:
            TrainError: the directory holds no valid plan (the message says why).
        """
        from actlab.sparsity.errors import PlanError
        from actlab.sparsity.plan import SparsityPlan

        if _is_plan(self.plan):
            return self.plan
        try:
            return SparsityPlan.load(self.plan)
        except PlanError as e:
            raise TrainError(f"mask-lora: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; an in-memory plan is recorded by its method and sparsity (save it to round-trip)."""
        d = super().to_dict()
        if _is_plan(self.plan):
            d["plan"] = {"in_memory": True, "method": self.plan.method, "config": self.plan.config.to_dict(),
                         "weights_sha256": self.plan.model.get("weights_sha256")}
        return d
