"""``DeftConfig``: DEFT's density loss on an activation site, objective ``deft``.

Example:
    >>> from actlab.train.config import config_from_dict
    >>> cfg = DeftConfig(weight=0.5)
    >>> config_from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from actlab.train.config import TrainConfig, is_number, register_config
from actlab.train.errors import TrainError


@register_config
@dataclass(frozen=True)
class DeftConfig(TrainConfig):
    """LM loss + ``weight`` x the mean over layers of ``mean(a² / (a² + eps))`` at ``site`` (DEFT, IBM).

    ``a² / (a² + eps)`` is a smooth count of the non-zero activations (1 where ``|a| >> sqrt(eps)``,
    0 at ``a = 0``), averaged over tokens and features of each layer's tensor, then over layers.

    Attributes:
        site: a site kind (``mlp.act_out``: the MLP activation's output, DEFT's choice) or a site pattern
            (``layers.3.mlp.act_out``), resolved by ``actlab.activations.sites.resolve_sites``.
        weight: the density term's weight (DEFT: 1.0).
        eps: the smoothing constant ``eps`` (DEFT: 1e-7).
    """

    objective: ClassVar[str] = "deft"

    site: str = "mlp.act_out"
    weight: float = 1.0
    eps: float = 1e-7

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.site, str) or not self.site:
            raise TrainError(f"deft: site must be a site kind such as 'mlp.act_out', got {self.site!r}")
        if not is_number(self.weight) or self.weight < 0:
            raise TrainError(f"deft: weight must be a finite number >= 0, got {self.weight!r}")
        if not is_number(self.eps) or self.eps <= 0:
            raise TrainError(f"deft: eps must be a finite number > 0, got {self.eps!r}")
