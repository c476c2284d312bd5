"""Distillation: a KL term toward a teacher's next-token distributions, shared by the objectives that take one.

The teacher is either the model as it was handed to the objective, frozen before training touches it (the
ReluLLaMA recipe's "original model"), or another model directory with the same vocabulary, typically the dense
fine-tuned model of the same text (recovery of a sparse model by distilling the dense one). The teacher is a
separate module, so the hooks an objective puts on the student (masks, captures) never run in its forward.

Example:
    >>> import torch
    >>> x = torch.randn(1, 3, 5)
    >>> float(kl_to_teacher(x, x))
    0.0
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from actlab.train.errors import TrainError


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher ‖ student) of the next-token distributions (float32).

    Example:
        >>> x = torch.randn(1, 3, 5)
        >>> float(kl_to_teacher(x, x))
        0.0
    """
    s = F.log_softmax(student_logits.float().flatten(0, -2), dim=-1)
    t = F.log_softmax(teacher_logits.float().flatten(0, -2), dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def _vocab(model: nn.Module) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return int(head.weight.shape[0]) if head is not None else getattr(getattr(model, "config", None), "vocab_size", None)


class Teacher:
    """A frozen model whose logits the student is pulled toward.

    Example:
        >>> teacher = Teacher.copy_of(model)                      # doctest: +SKIP
        >>> teacher = Teacher.load("runs/dense-ft", model)        # doctest: +SKIP
        >>> kl = kl_to_teacher(student_logits, teacher.logits(ids))   # doctest: +SKIP
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval().requires_grad_(False)

    @classmethod
    def copy_of(cls, model: nn.Module) -> Teacher:
        """``model`` as it is now (a deep copy: training the student leaves it unchanged)."""
        return cls(copy.deepcopy(model))

    @classmethod
    def load(cls, spec: str, student: nn.Module) -> Teacher:
        """The model ``spec`` names (a directory, an alias, a hub id), checked against ``student``'s vocabulary.

        Raises:
            TrainError: it does not load, or its vocabulary differs from the student's (the KL would compare
                different tokens).
        """
        import actlab

        try:
            module, _ = actlab.load_model(spec)
        except (OSError, ValueError) as e:  # ModelLoadError, and transformers' own for a broken directory
            raise TrainError(f"teacher {spec}: {e}") from e
        mine, theirs = _vocab(student), _vocab(module)
        if mine != theirs:
            raise TrainError(f"teacher {spec} has a vocabulary of {theirs} tokens and the trained model {mine}; "
                             "distill from a model of the same tokenizer (e.g. the dense fine-tuned model)")
        return cls(module)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``ids`` (no graph), on ``ids``' device."""
        with torch.no_grad():
            self.module.to(ids.device)
            return self.module(input_ids=ids, use_cache=False).logits


__all__ = ["Teacher", "kl_to_teacher"]
