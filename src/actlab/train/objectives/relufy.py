"""``relufy``: ReLU-fication. Swap the MLP activation (``actlab.functions.swaps``), then train with the LM loss,
ProSparse's progressive L1 on the MLP intermediate and optionally a KL term toward the original model.

The intermediate is read in :meth:`RelufyObjective.active` through ``actlab.activations.hooks.capture``
(per-layer scalars, graph kept; the teacher's forward is not counted). The KL teacher
is the model as it was handed to :meth:`~RelufyObjective.prepare`: with LoRA the same weights with the
adapters disabled and the old activation put back for one forward (no second copy), with full fine-tuning a
frozen copy. The saved model keeps the swap in its config, so ``actlab.load_model(out)`` runs it.

Example:
    >>> from actlab.train import RelufyConfig
    >>> handler_for(RelufyConfig()).__class__.__name__                  # doctest: +SKIP
    'RelufyObjective'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import Site, resolve_sites
from actlab.functions.swaps import SwapError, activation_as, activation_state, swap_activation
from actlab.train.distill import Teacher, kl_to_teacher
from actlab.train.errors import TrainError
from actlab.train.objective import Objective, register_objective
from actlab.train.objectives.relufy_config import RelufyConfig, l1_lambda


def _peft_model(module: nn.Module) -> nn.Module | None:
    """The PEFT model at or inside ``module`` (DDP / compile wrappers), whose ``disable_adapter`` gives the base."""
    while module is not None:
        if callable(getattr(module, "disable_adapter", None)) and hasattr(module, "peft_config"):
            return module
        inner = module._modules.get("module")
        module = inner if inner is not None else module._modules.get("_orig_mod")
    return None


@register_objective(RelufyConfig)
class RelufyObjective(Objective):
    """LM loss + λ(step)·mean|a| + ``kl``·KL; logs ``l1_loss``, ``lambda``, ``kl_loss`` and ``zero_frac``.

    Attributes:
        sites: the MLP intermediate's sites (one per layer), set by :meth:`prepare`.
        swap: what :func:`~actlab.functions.swaps.swap_activation` returned.
    """

    config: RelufyConfig

    def __init__(self, config: RelufyConfig) -> None:
        super().__init__(config)
        self.sites: dict[str, Site] = {}
        self.swap: dict[str, Any] = {}
        self._l1: list[torch.Tensor] = []
        self._zeros: list[torch.Tensor] = []
        self._numel = 0
        self._original = None  # ActivationState of the unswapped model (LoRA teacher)
        self._teacher: Teacher | None = None  # frozen copy (full fine-tuning teacher)
        self._in_teacher = False

    @property
    def site_kind(self) -> str:
        """``mlp.down_in`` for dReLU (the product of its two ReLUs), else ``mlp.act_out``."""
        return "mlp.down_in" if self.config.activation == "drelu" else "mlp.act_out"

    def lam(self, step: int | None = None) -> float:
        """The L1 weight at ``step`` (default: the current step)."""
        c = self.config
        step = self.step if step is None else step
        return l1_lambda(min(step, self.total_steps - 1), self.total_steps, c.l1, c.l1_warmup, c.l1_start_frac,
                         c.l1_stages)

    def prepare(self, model: nn.Module, data: Any = None) -> nn.Module:
        c = self.config
        if c.kl > 0 and c.adapter == "lora":
            self._original = activation_state(model)
        elif c.kl > 0:
            self._teacher = Teacher.copy_of(model)
        try:
            self.swap = swap_activation(model, c.activation, theta=c.theta, relu_after_norms=c.relu_after_norms)
        except SwapError as e:
            raise TrainError(f"relufy: {e}") from e
        self.sites = resolve_sites(model, self.site_kind)
        return super().prepare(model, data)

    @contextmanager
    def active(self, model: nn.Module) -> Iterator[None]:
        self._l1, self._zeros, self._numel = [], [], 0

        def keep(site: Site, x: torch.Tensor) -> None:
            if self._in_teacher:  # the teacher's forward passes the same hooked modules
                return
            self._l1.append(x.float().abs().mean())  # with its graph: the L1 term trains through it
            self._zeros.append((x == 0).sum())
            self._numel += x.numel()

        with capture(model, self.sites, fn=keep):
            yield

    def _teacher_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        self._in_teacher = True
        try:
            return self._teacher_forward(model, ids)
        finally:
            self._in_teacher = False

    def _teacher_forward(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self._teacher is not None:
                return self._teacher.logits(ids)
            peft = _peft_model(model)
            if peft is None or self._original is None:
                raise TrainError("relufy: the KL term with LoRA needs the PEFT model prepare() returned")
            with peft.disable_adapter(), activation_as(peft, self._original):
                return peft(input_ids=ids, use_cache=False).logits

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        if not self._l1:
            raise TrainError("relufy: no activations were captured; run the forward inside objective.active(model)")
        l1 = torch.stack(self._l1).mean()
        zero_frac = float(torch.stack(self._zeros).sum()) / max(self._numel, 1)
        self._l1, self._zeros, self._numel = [], [], 0
        lam = self.lam()
        total = outputs.loss + lam * l1
        kl = torch.zeros((), device=l1.device)
        if c.kl > 0:
            kl = kl_to_teacher(outputs.logits, self._teacher_logits(model, batch))
            total = total + c.kl * kl
        metrics = {"l1_loss": float(l1.detach()), "lambda": lam, "kl_loss": float(kl.detach()),
                   "zero_frac": zero_frac}
        return total, metrics

    def finalize(self, model: nn.Module, out_dir: Path | None) -> nn.Module:
        merged = super().finalize(model, out_dir)
        self._teacher = self._original = None
        if self.config.fatrelu_final_theta is not None:  # ProSparse's last stage: shift the ReLU's threshold
            self.swap = swap_activation(merged, "fatrelu", theta=self.config.fatrelu_final_theta,
                                        relu_after_norms=self.config.relu_after_norms)
        return merged
