"""One config dataclass per training objective, and the registry that names them.

The verb never changes when an objective is added (``actlab.train(model, DeftConfig(), data)``): an
objective is a config class registered here plus a handler registered with
:func:`actlab.train.objective.register_objective`. Configs round-trip through JSON; loading resolves the
class by its ``objective`` name through the registry. Every objective shares how it trains the model
(:class:`TrainConfig`: LoRA through ``peft`` on the seven projections, or full fine-tuning); the loop's
own settings (tokens, learning rate, schedule, checkpoints) are :class:`actlab.train.loop.TrainArgs`.

Example:
    >>> cfg = DenseConfig(adapter="full")
    >>> config_from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from actlab.configs import from_json_dict, to_json_dict
from actlab.train.errors import TrainError

#: objective name -> config class
CONFIGS: dict[str, type[TrainConfig]] = {}

ADAPTERS = ("lora", "full")
#: the seven projections LoRA targets by default (HF Llama-family names; PEFT matches the suffix)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_number(value: object) -> bool:
    """A finite int or float, and not a bool (``True`` is an int to Python, never a weight to a config)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def register_config(cls: type[TrainConfig]) -> type[TrainConfig]:
    """Class decorator: make ``cls`` loadable by its ``objective`` name."""
    if cls.objective in CONFIGS and CONFIGS[cls.objective] is not cls:
        raise ValueError(f"objective {cls.objective!r} is already registered by {CONFIGS[cls.objective].__name__}")
    CONFIGS[cls.objective] = cls
    return cls


@dataclass(frozen=True)
class TrainConfig:
    """Base of every objective config: what is trained.

    Attributes:
        adapter: ``lora`` (PEFT LoRA on ``lora_targets``, merged into the weights at the end) or ``full``.
        lora_r, lora_alpha, lora_dropout: LoRA rank, scale numerator and dropout.
        lora_targets: module-name suffixes LoRA wraps (default: the seven projections).
    """

    objective: ClassVar[str] = ""

    adapter: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTERS:
            raise TrainError(f"{self.objective}: unknown adapter {self.adapter!r}; choose one of {', '.join(ADAPTERS)}")
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise TrainError(f"{self.objective}: lora_r must be >= 1 and lora_alpha > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TrainError(f"{self.objective}: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.adapter == "lora" and not self.lora_targets:
            raise TrainError(f"{self.objective}: lora_targets is empty; name the modules LoRA wraps")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including ``objective``, the registry key used to load it back."""
        return to_json_dict(self, "objective")


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a config from :meth:`TrainConfig.to_dict` output, resolving the class by objective name.

    Raises:
        TrainError: unknown objective, unknown or invalid fields.
    """
    import actlab.train.objectives  # noqa: F401  (registers the built-in objectives)

    return from_json_dict(d, CONFIGS, "objective", TrainError, "training objective")


@register_config
@dataclass(frozen=True)
class DenseConfig(TrainConfig):
    """Plain next-token fine-tuning: the baseline every induced arm is compared with (same text, same tokens).

    Example:
        >>> DenseConfig().objective
        'dense'
    """

    objective: ClassVar[str] = "dense"
