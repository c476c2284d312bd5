"""``deft``: DEFT's density loss, ``mean(a² / (a² + eps))`` at a site, added to the LM loss.

The site's tensors are read in :meth:`DeftObjective.active` through ``actlab.activations.hooks.capture``
(the hooks live for one forward) and kept with their graph, so the term's gradient reaches the
adapters. Per-layer density at the profile thresholds is the loop's evaluation (``train/density.py``).

Example:
    >>> from actlab.train import DeftConfig
    >>> handler_for(DeftConfig()).__class__.__name__                  # doctest: +SKIP
    'DeftObjective'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import Site, SiteError, resolve_sites
from actlab.train.errors import TrainError
from actlab.train.objective import Objective, register_objective
from actlab.train.objectives.deft_config import DeftConfig


def density_loss(tensors: list[torch.Tensor], eps: float) -> torch.Tensor:
    """Mean over ``tensors`` of ``mean(a² / (a² + eps))`` over their tokens and features (float32).

    Example:
        >>> round(float(density_loss([torch.tensor([0.0, 1.0])], 1e-7)), 4)
        0.5
    """
    terms = []
    for a in tensors:
        a2 = a.float().square()
        terms.append((a2 / (a2 + eps)).mean())
    return torch.stack(terms).mean()


@register_objective(DeftConfig)
class DeftObjective(Objective):
    """LM loss + ``weight`` x density loss at ``config.site``; logs ``density_loss``.

    Attributes:
        sites: the resolved sites (one per layer for a site kind), set by :meth:`prepare`.
    """

    config: DeftConfig

    def __init__(self, config: DeftConfig) -> None:
        super().__init__(config)
        self.sites: dict[str, Site] = {}
        self._tensors: list[torch.Tensor] = []

    def prepare(self, model: nn.Module, data: Any = None) -> nn.Module:
        try:
            self.sites = resolve_sites(model, self.config.site)
        except SiteError as e:
            raise TrainError(f"deft: site {self.config.site!r} is not in this model: {e}") from e
        return super().prepare(model, data)

    @contextmanager
    def active(self, model: nn.Module) -> Iterator[None]:
        self._tensors = []

        def keep(site: Site, x: torch.Tensor) -> None:
            # not detached: the density term trains through it; evaluation (no grad) keeps nothing,
            # or a whole eval pass's activations would pile up without a loss() to consume them
            if torch.is_grad_enabled():
                self._tensors.append(x)

        with capture(model, self.sites, fn=keep):
            yield

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        if not self._tensors:
            raise TrainError("deft: no activations were captured; run the training forward inside "
                             "objective.active(model), with gradients enabled")
        density = density_loss(self._tensors, self.config.eps)
        self._tensors = []
        return outputs.loss + self.config.weight * density, {"density_loss": float(density.detach())}
