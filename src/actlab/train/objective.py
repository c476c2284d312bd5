"""The handler side of an objective: what the training loop asks of it, and the registry.

The loop (``actlab.train.loop``) owns everything generic: batches, the optimizer and schedule,
accumulation, precision, logging, checkpoints, processes. An objective owns only what differs:

1. :meth:`Objective.prepare` once, before the optimizer is built: swap activations, apply a plan, wrap
   with LoRA (the base class does the LoRA / full fine-tuning part from :class:`TrainConfig`), and
   return the module to train.
2. :meth:`Objective.active` around every training forward: the scoped hooks the objective needs
   (masks, density capture), through ``actlab.activations.hooks`` like every other feature.
3. :meth:`Objective.loss`: the loss of one micro-batch (LM loss by default, plus the objective's terms)
   and the scalar metrics to log.
4. :meth:`Objective.state_dict` / :meth:`Objective.load_state_dict`: what a resume must restore beyond
   model and optimizer (schedules' state, recalibrated thresholds).
5. :meth:`Objective.finalize` once at the end: merge LoRA, write extra artefacts (a plan) into the output
   directory, and return the plain Hugging Face model that is saved.

Example:
    >>> from actlab.train.config import DenseConfig
    >>> handler_for(DenseConfig()).__class__.__name__
    'DenseObjective'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actlab.train.config import TrainConfig
from actlab.train.errors import TrainError

#: config class -> handler class
HANDLERS: dict[type[TrainConfig], type[Objective]] = {}


def register_objective(config_cls: type[TrainConfig]):
    """Class decorator: ``cls`` is the handler of ``config_cls``."""

    def deco(cls: type[Objective]) -> type[Objective]:
        HANDLERS[config_cls] = cls
        return cls

    return deco


class Objective:
    """Base handler: LM loss, LoRA or full fine-tuning as the config says. Subclasses add their terms.

    Attributes:
        config: the objective's config.
        step: the optimizer step the loop is at (set by the loop before each accumulation cycle).
        total_steps: the run's number of optimizer steps (set by the loop before training).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.step = 0
        self.total_steps = 1

    def prepare(self, model: nn.Module, data: Any = None) -> nn.Module:
        """Make ``model`` trainable for this objective; return the module the optimizer trains.

        ``data`` is the loop's calibration batches (for objectives that calibrate before training).
        The base wraps the model with LoRA (``adapter="lora"``) or unfreezes it (``"full"``).
        """
        from actlab.train.lora import wrap

        return wrap(model, self.config)

    @contextmanager
    def active(self, model: nn.Module) -> Iterator[None]:
        """Hooks that live during one training forward (none by default)."""
        yield

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch and the metrics to log; ``outputs`` is the model's forward output."""
        return outputs.loss, {}

    def state_dict(self) -> dict[str, Any]:
        """What a resume restores beyond model and optimizer state (tensors and JSON-ready values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""

    def finalize(self, model: nn.Module, out_dir: Path | None) -> nn.Module:
        """Merge LoRA and return the plain model to save; write extra artefacts into ``out_dir``."""
        from actlab.train.lora import merge

        return merge(model)


def handler_for(config: TrainConfig) -> Objective:
    """The handler instance for ``config``.

    Raises:
        TrainError: no handler is registered for the config's class.
    """
    import actlab.train.objectives  # noqa: F401  (registers the built-in objectives)

    cls = HANDLERS.get(type(config))
    if cls is None:
        raise TrainError(f"no handler registered for training objective {config.objective!r}")
    return cls(config)
