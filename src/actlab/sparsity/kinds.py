"""What each kind of plan entry means: the one table the masking path and the kernel swap read.

======  ==============================  ==========================================  ==================
kind    where the mask acts             keep channel ``i`` iff                      kernel fast path
======  ==============================  ==========================================  ==================
input   input of ``entry.modules``      ``|x_i| > t_i`` (optionally on ``x Q``)     ``SparseLinear``
act     output of the act module        ``|act(gate)_i| > t_i``                     ``SparseGatedMLP``
topk    input of ``entry.modules``      ``|x_i|`` among the ``k`` largest of its    none (masking)
                                        token (``threshold`` holds ``k``)
======  ==============================  ==========================================  ==================

Example:
    >>> import torch
    >>> mask("input", torch.tensor([0.1, -2.0, 0.5]), torch.tensor(0.4))
    tensor([ 0.0000, -2.0000,  0.5000])
    >>> ENTRY_KINDS["topk"].kernel is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from actlab.sparsity.errors import PlanError


def _keep_above(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return x.abs() > threshold


def _keep_topk(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    idx = x.abs().topk(min(int(threshold), x.shape[-1]), dim=-1).indices  # [..., k]
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, idx, True)


@dataclass(frozen=True)
class EntryKind:
    """The meaning of one entry kind.

    Attributes:
        direction: ``"input"``: the mask acts on the tensor entering each of ``entry.modules`` (a
            forward pre-hook); ``"output"``: on the tensor leaving it (a forward hook).
        keep: ``keep(x, threshold) -> bool tensor`` of the channels kept.
        kernel: what the kernel swap turns the entry into: ``"linear"`` (one ``SparseLinear`` over the
            consumers), ``"gated_mlp"`` (``SparseGatedMLP`` for the whole MLP) or ``None`` (masking only).
        per_channel: ``threshold`` may be a ``[width]`` vector (otherwise it is a scalar such as top-k's k).
        rotatable: the entry may carry a rotation ``Q`` (the mask acts on ``x Q``).
    """

    direction: str
    keep: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    kernel: str | None
    per_channel: bool
    rotatable: bool


#: kind -> meaning; ``actlab.sparsity.plan.KINDS`` lists the same names
ENTRY_KINDS: dict[str, EntryKind] = {
    "input": EntryKind("input", _keep_above, kernel="linear", per_channel=True, rotatable=True),
    "act": EntryKind("output", _keep_above, kernel="gated_mlp", per_channel=True, rotatable=False),
    "topk": EntryKind("input", _keep_topk, kernel=None, per_channel=False, rotatable=False),
}


def entry_kind(kind: str) -> EntryKind:
    """The table row for ``kind``.

    Raises:
        PlanError: ``kind`` is not in the table.
    """
    try:
        return ENTRY_KINDS[kind]
    except KeyError:
        raise PlanError(f"unknown plan entry kind {kind!r} (kinds: {', '.join(ENTRY_KINDS)})") from None


class _StraightThrough(torch.autograd.Function):
    """Forward: the mask, bit-identical to ``masked_fill``; backward: the identity (straight-through).

    The gradient of Q-Sparse's ``(masked - x).detach() + x``, without its forward rounding (``inf - inf``).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return z.masked_fill(~keep, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def mask(
    kind: str,
    x: torch.Tensor,
    threshold: torch.Tensor,
    rotation: torch.Tensor | None = None,
    edit_keep: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    straight_through: bool = False,
) -> torch.Tensor:
    """``x`` with the channels an entry of ``kind`` drops set to zero.

    Args:
        rotation: ``Q`` ``[width, width]``: the mask acts on ``z = x Q`` and the result is ``mask(z) Q^T``.
        edit_keep: ``edit_keep(z, keep) -> keep``, to count what is dropped or keep positions dense.
        straight_through: the same output, but the gradient passes the dropped channels as if kept
            (training with a mask: ``actlab.train``'s ``mask-lora`` / ``topk-ste``); default: zero there.
    """
    z = x if rotation is None else x @ rotation
    keep = ENTRY_KINDS[kind].keep(z, threshold)
    if edit_keep is not None:
        keep = edit_keep(z, keep)
    out = _StraightThrough.apply(z, keep) if straight_through else z.masked_fill(~keep, 0)
    return out if rotation is None else out @ rotation.T
