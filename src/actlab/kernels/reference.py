"""Pure-PyTorch references that define the semantics of actlab's sparse kernels.

Masking is ``torch.where(|v| > t, v, 0)``, never ``v * mask``: a masked NaN must become 0 (NaN * 0 is NaN),
while a kept +-inf propagates exactly as in a dense matmul. NaN compares false, so it is always masked.
Weights are used as a dense layer fed the masked input uses them: a NaN or inf weight turns its output
NaN even in a masked row (``0 * inf``); the kernels hand calls with non-finite weights to these functions.
These functions are differentiable and run on any device and dtype; the compiled kernels must match them
within floating-point tolerance.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch
from torch import Tensor

from actlab.functions.table import ActivationFunction, get_function, kernel_functions
from actlab.kernels._args import check_linear_args, check_mlp_args

__all__ = ["Activation", "mask_below", "sparse_gated_mlp_reference", "sparse_linear_reference"]


class Activation(enum.IntEnum):
    """Gate activation of the fused gated-MLP kernel: the C enum ``actlab_act``, never renumber.

    The names, aliases and torch functions belong to :mod:`actlab.functions` (each entry's ``kernel_id``
    is one of these values); this enum only mirrors the C header.
    """

    SILU = 0
    GELU_TANH = 1
    RELU = 2

    @classmethod
    def parse(cls, act: str | int | Activation | ActivationFunction) -> Activation:
        """Resolves an activation from its enum, code, table entry or name (any alias in the table).

        Raises:
            ValueError: the name is unknown, or the kernels do not support that function.

        Example:
            >>> Activation.parse("gelu_pytorch_tanh")
            <Activation.GELU_TANH: 1>
        """
        if isinstance(act, (str, ActivationFunction)):
            entry = get_function(act) if isinstance(act, str) else act
            if entry.kernel_id is None:
                supported = ", ".join(e.name for e in kernel_functions().values())
                raise ValueError(f"the sparse kernels do not support activation {entry.name!r}; they support {supported}")
            return cls(entry.kernel_id)
        return cls(act)


#: the torch function of each kernel activation: the table's, so the reference computes what C does
ACT_FUNCTIONS: dict[Activation, Callable[[Tensor], Tensor]] = {
    Activation(k): e.fn for k, e in kernel_functions().items()
}


def mask_below(v: Tensor, threshold: Tensor | float | None) -> Tensor:
    """Zeroes every entry whose magnitude is not above its threshold (broadcast over the last dim).

    ``None`` means no mask at all (NaN then propagates, as in a dense layer).

    Example:
        >>> mask_below(torch.tensor([0.1, -2.0, float("nan")]), 0.5)
        tensor([ 0., -2.,  0.])
    """
    if threshold is None:
        return v
    t = torch.as_tensor(threshold, dtype=v.dtype, device=v.device)
    return torch.where(v.abs() > t, v, torch.zeros((), dtype=v.dtype, device=v.device))


def sparse_linear_reference(
    x: Tensor, wt: Tensor, threshold: Tensor | float, bias: Tensor | None = None
) -> Tensor:
    """``mask_below(x, threshold) @ wt + bias``: the semantics of :func:`actlab.kernels.ops.sparse_linear`.

    Args:
        x: ``[..., in]`` input.
        wt: ``[in, out]`` weight, transposed relative to ``nn.Linear.weight``.
        threshold: scalar or ``[in]`` per-input-channel thresholds; ``x_i`` is kept where ``|x_i| > t_i``.
        bias: optional ``[out]``.

    Example:
        >>> x, wt = torch.tensor([[1.0, 0.1]]), torch.eye(2)
        >>> sparse_linear_reference(x, wt, 0.5)
        tensor([[1., 0.]])
    """
    check_linear_args(x, wt, threshold, bias)  # the kernel's boundary checks: one error on every path
    y = mask_below(x, threshold) @ wt  # [..., out]
    return y if bias is None else y + bias


def sparse_gated_mlp_reference(
    x: Tensor,
    w_gate_t: Tensor,
    w_up: Tensor,
    w_down_t: Tensor,
    act: str | int | Activation = Activation.SILU,
    t_act: Tensor | float | None = None,
    t_in: Tensor | float | None = None,
    t_down: Tensor | float | None = None,
    biases: tuple[Tensor | None, Tensor | None, Tensor | None] = (None, None, None),
) -> Tensor:
    """Gated MLP with activation-magnitude neuron selection (CATS/CHESS), the semantics of
    :func:`actlab.kernels.ops.sparse_gated_mlp`::

        xm = mask(x, t_in); a = act(xm @ Wg^T + bg); keep_j = |a_j| > t_act_j
        h  = where(keep, a * (xm @ Wu^T + bu), 0); y = mask(h, t_down) @ Wd^T + bd

    Args:
        x: ``[..., d_model]``.
        w_gate_t: ``[d_model, d_ff]`` (gate weight transposed).
        w_up: ``[d_ff, d_model]`` (up weight as ``nn.Linear`` stores it).
        w_down_t: ``[d_ff, d_model]`` (down weight transposed).
        act: activation (enum, code or name such as ``"silu"``).
        t_act, t_in, t_down: scalar or per-channel thresholds, ``None`` for no mask.
        biases: optional ``(b_gate [d_ff], b_up [d_ff], b_down [d_model])``.

    Example:
        >>> d, f = 4, 8
        >>> x = torch.randn(1, d)
        >>> y = sparse_gated_mlp_reference(x, torch.randn(d, f), torch.randn(f, d), torch.randn(f, d), "silu", 0.1)
        >>> y.shape
        torch.Size([1, 4])
    """
    check_mlp_args(x, w_gate_t, w_up, w_down_t, (t_in, t_act, t_down), biases)
    b_gate, b_up, b_down = biases
    xm = mask_below(x, t_in)
    gate = xm @ w_gate_t  # [..., d_ff]
    if b_gate is not None:
        gate = gate + b_gate
    a = ACT_FUNCTIONS[Activation.parse(act)](gate)
    up = xm @ w_up.t()  # [..., d_ff]
    if b_up is not None:
        up = up + b_up
    if t_act is None:
        h = a * up
    else:
        t = torch.as_tensor(t_act, dtype=a.dtype, device=a.device)
        h = torch.where(a.abs() > t, a * up, torch.zeros((), dtype=a.dtype, device=a.device))
    y = mask_below(h, t_down) @ w_down_t  # [..., d_model]
    return y if b_down is None else y + b_down
