"""Outlier scores of logits, in pytorch-ood's convention: larger means more likely out-of-distribution.

* energy: ``-T logsumexp(logits / T)`` (the energy itself; the paper's ID score is its negative).
* max-logit: ``-max_c logits_c``.
* MSP: ``-max_c softmax(logits / T)_c``.

Example:
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> max_logit(logits)
    tensor([-2., -0.])
"""

from __future__ import annotations

import torch

from actlab.functions.ood.errors import OODError

__all__ = ["LOGIT_SCORES", "energy", "max_logit", "msp"]


def _check(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2:
        raise OODError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}")
    return logits


def energy(logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """Energy ``-t * logsumexp(logits / t)`` per sample, ``[B]``."""
    return -t * torch.logsumexp(_check(logits) / t, dim=1)


def max_logit(logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """The negated largest logit per sample, ``[B]`` (``t`` is accepted and ignored, for a uniform call)."""
    return -_check(logits).max(dim=1).values


def msp(logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """The negated maximum softmax probability of ``logits / t`` per sample, ``[B]``."""
    return -(_check(logits) / t).softmax(dim=1).max(dim=1).values


#: the logit scores by name: what ReAct, ASH and SCALE apply to the head's logits of shaped features
LOGIT_SCORES = {"energy": energy, "max-logit": max_logit, "msp": msp}
