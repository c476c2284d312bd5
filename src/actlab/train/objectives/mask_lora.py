"""``mask-lora``: train with a sparsity plan applied, then merge and re-fingerprint the plan (CATS recovery).

The plan goes on through ``actlab.apply_`` (the masking path: hooks owned by ``actlab_sparsity``,
thresholds as buffers in the model's ``state_dict``) after LoRA is injected, so each mask reaches a
LoRA layer's base and LoRA branches alike. ``gradient="ste"`` switches the owner's masks to
straight-through (same forward, identity gradient); ``"hard"`` keeps the plain mask (zero gradient where
masked). At the end the masks come off, LoRA is merged, and the plan is written to ``out/plan`` with
the merged model's fingerprint, so ``actlab eval --plan out/plan`` runs on the trained model.

Example:
    >>> cfg = MaskLoraConfig(plan="plans/teal50")                      # doctest: +SKIP
    >>> result = actlab.train.loop.train(model, cfg, windows, out="runs/ml")   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actlab.models.wrappers import unwrap
from actlab.sparsity.apply import OWNER, apply_, check_plan, remove_
from actlab.sparsity.calibrate import calibrate
from actlab.sparsity.errors import PlanError
from actlab.sparsity.fingerprint import model_fingerprint
from actlab.sparsity.plan import ROTATION_SUFFIX, SparsityPlan
from actlab.train.distill import Teacher, kl_to_teacher
from actlab.train.errors import TrainError
from actlab.train.objective import Objective, register_objective
from actlab.train.objectives.mask_lora_config import MaskLoraConfig


def apply_masks(model: nn.Module, plan: SparsityPlan, straight_through: bool) -> None:
    """``apply_(model, plan)`` with the owner's straight-through switch set.

    Training changes the weights (full fine-tuning), so a plan re-applied during a run (recalibrated,
    resumed) is re-fingerprinted for the weights it is applied to; ``prepare`` checked the original fit.
    """
    inner = unwrap(model)[0]
    apply_(model, dataclasses.replace(plan, model=model_fingerprint(inner)))
    inner.get_submodule(OWNER).straight_through = straight_through


def trained_plan(plan: SparsityPlan, merged: nn.Module, record: dict[str, Any]) -> SparsityPlan:
    """``plan`` re-fingerprinted for ``merged`` (new weights, new fingerprint), ``record`` in its ``extra``."""
    extra = {**plan.extra, "trained": {**record, "base_weights_sha256": plan.model.get("weights_sha256")}}
    return dataclasses.replace(plan, model=model_fingerprint(merged), extra=extra)


@register_objective(MaskLoraConfig)
class MaskLoraObjective(Objective):
    """LM loss under the plan's masks (+ ``kl`` x KL toward a dense teacher); optional recalibration every N steps.

    Attributes:
        plan: the plan applied now (recalibration replaces its thresholds).
        final_plan: after :meth:`finalize`, the plan fingerprinted for the merged model.
    """

    config: MaskLoraConfig

    def __init__(self, config: MaskLoraConfig) -> None:
        super().__init__(config)
        self.plan: SparsityPlan | None = None
        self.final_plan: SparsityPlan | None = None
        self._model: nn.Module | None = None
        self._calib: Any = None
        self._calibrated_at = 0
        self.teacher: Teacher | None = None

    @property
    def straight_through(self) -> bool:
        return self.config.gradient == "ste"

    def make_plan(self, model: nn.Module) -> SparsityPlan:
        """The plan to train under (loaded from the config; subclasses may build one)."""
        return self.config.load_plan()

    def prepare(self, model: nn.Module, data: Any = None) -> nn.Module:
        plan = self.make_plan(model)
        try:
            check_plan(model, plan)
        except PlanError as e:
            raise TrainError(f"{self.config.objective}: {e}") from e
        every = getattr(self.config, "recalibrate_every", 0)
        if every:
            if not plan.config.threshold_based or plan.method == "composed":
                raise TrainError(f"{self.config.objective}: recalibrate_every needs a plan of one calibrated method "
                                 f"(teal, wina, cats, chess, cett); a {plan.method} plan has nothing to recalibrate")
            if data is None:
                raise TrainError(f"{self.config.objective}: recalibrate_every needs calibration windows (data)")
        self.plan, self._calib = plan, data
        kl = getattr(self.config, "kl", 0.0)
        if kl and self.config.teacher:
            self.teacher = Teacher.load(self.config.teacher, model)
        elif kl:
            self.teacher = Teacher.copy_of(model)  # before LoRA and the masks go on: the dense model
        trained = super().prepare(model, data)
        apply_masks(trained, plan, self.straight_through)
        self._model = trained
        return trained

    def active(self, model: nn.Module):
        every = getattr(self.config, "recalibrate_every", 0)
        if every and self.step > 0 and self.step % every == 0 and self._calibrated_at != self.step:
            self.recalibrate(model)
        return super().active(model)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = super().loss(model, batch, outputs)
        if self.teacher is None:
            return loss, metrics
        kl = kl_to_teacher(outputs.logits, self.teacher.logits(batch["input_ids"]))
        return loss + self.config.kl * kl, {**metrics, "kl_loss": float(kl.detach())}

    def recalibrate(self, model: nn.Module) -> None:
        """Re-run the plan's method at its sparsity on the unmasked model; the new thresholds go in its place."""
        inner = unwrap(model)[0]
        was_training = inner.training
        device = next(inner.parameters()).device
        remove_(model)
        plan = self.plan
        try:
            inner.eval()
            with torch.autocast(device.type, enabled=False):
                plan = calibrate(inner, self.plan.config, self._calib)
            plan.extra = {**self.plan.extra, "recalibrated_at_step": self.step}
        finally:
            inner.train(was_training)
            apply_masks(model, plan, self.straight_through)
        self.plan, self._calibrated_at = plan, self.step

    def state_dict(self) -> dict[str, Any]:
        if not getattr(self.config, "recalibrate_every", 0) or self.plan is None:
            return {}
        tensors = {e.key: e.threshold.detach().cpu() for e in self.plan.entries}
        tensors.update({e.key + ROTATION_SUFFIX: e.rotation.detach().cpu()
                        for e in self.plan.entries if e.rotation is not None})
        return {"calibrated_at": self._calibrated_at, "thresholds": tensors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.plan is None or self._model is None:
            raise TrainError(f"{self.config.objective}: load_state_dict before prepare")
        tensors = state["thresholds"]
        missing = sorted({e.key for e in self.plan.entries} - set(tensors))
        if missing:
            raise TrainError(f"{self.config.objective}: the checkpoint lacks thresholds for {missing[:3]}: "
                             "it was written for another plan")
        entries = [dataclasses.replace(e, threshold=tensors[e.key].float(),
                                       rotation=tensors.get(e.key + ROTATION_SUFFIX, e.rotation))
                   for e in self.plan.entries]
        self.plan = dataclasses.replace(self.plan, entries=entries)
        self._calibrated_at = int(state["calibrated_at"])
        remove_(self._model)
        apply_masks(self._model, self.plan, self.straight_through)

    def finalize(self, model: nn.Module, out_dir: Path | None) -> nn.Module:
        remove_(model)
        merged = super().finalize(model, out_dir)
        self.teacher = None
        record = {"objective": self.config.objective, "steps": self.total_steps}
        if hasattr(self.config, "gradient"):
            record["gradient"] = self.config.gradient
        self.final_plan = trained_plan(self.plan, merged, record)
        if out_dir is not None:
            self.final_plan.save(Path(out_dir) / "plan", overwrite=True)
        return merged
