"""Stateless helpers of :mod:`actlab.kernels.ops`: where a call goes, how tensors become the extension's
raw-pointer arguments, and the autograd formula of the registered linear op.

The marshalling runs once per layer per decoded token, so it uses only the cheapest tensor queries
(``is_contiguous``, ``data_ptr``, ``numel``, ``shape``; not ``device`` or ``reshape``).

The checks here are the boundary: C reads raw pointers with the lengths it is told, so every length it
will read (bias, thresholds, weight rows) is checked against the shapes before a pointer crosses, and the
same checks run before the reference, so a bad call raises the same ``ValueError`` on every path.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor

DISABLE_ENV = "ACTLAB_DISABLE_KERNELS"
_ENV_KEY = DISABLE_ENV.encode()


def env_disabled() -> bool:
    """ACTLAB_DISABLE_KERNELS set (to anything but 0), read on every call so tests can flip it.

    Reads the bytes mapping behind ``os.environ`` where CPython has one: ``os.environ.get`` encodes the
    key on every call and costs about a microsecond, a tenth of this op's whole Python overhead."""
    data = getattr(os.environ, "_data", None)
    value = (
        data.get(_ENV_KEY) if isinstance(data, dict) and os.name == "posix" else os.environ.get(DISABLE_ENV)
    )
    return value not in (None, "", "0", b"", b"0")


def choose_route(x: Tensor, *others: Tensor | None) -> str:
    """Where a call goes: "op" (the registered custom op) while compiling or exporting, or on tensor
    subclasses such as fake tensors; "reference" when autograd must see the computation; else "direct",
    the extension called with raw pointers."""
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor:
        return "op"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *others)):
        return "reference"
    return "direct"


def count_rows(x: Tensor) -> int:
    """Number of tokens in a [..., features] tensor (prefill when above ops.MAX_KERNEL_ROWS)."""
    n = x.shape[-1] if x.dim() else 1
    return x.numel() // n if n else math.prod(x.shape[:-1])


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_threshold(name: str, t: Tensor | float | None, n: int) -> None:
    """A threshold is ``None``, a number, or a tensor of shape ``[]``, ``[1]`` or ``[n]``.

    Stricter than broadcasting: a ``[rows, n]`` or ``[1, 1, n]`` threshold would broadcast in the reference
    (changing the output's shape or meaning per token) while the kernel reads one value per channel."""
    if t is None or not isinstance(t, Tensor):
        return
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got shape {_shape(t)}")


def check_bias(name: str, b: Tensor | None, n: int) -> None:
    """A bias is ``None`` or a ``[n]`` tensor (the kernel reads exactly ``n`` values)."""
    if b is not None and (b.dim() != 1 or b.shape[0] != n):
        raise ValueError(f"{name} must have shape ({n},), got shape {_shape(b)}")


def check_linear_args(x: Tensor, wt: Tensor, threshold: Tensor | float, bias: Tensor | None) -> None:
    """Raises ValueError unless ``x [..., in]``, ``wt [in, out]``, ``threshold`` (scalar or ``[in]``) and
    ``bias [out]`` fit together: what ``sparse_linear`` and its reference accept."""
    if x.dim() < 1 or wt.dim() != 2:
        raise ValueError(f"sparse_linear needs x [..., in] and wt [in, out], got {_shape(x)} and {_shape(wt)}")
    n_in, n_out = wt.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features, wt expects {n_in} (wt is [in, out], transposed)")
    check_threshold("threshold", threshold, n_in)
    check_bias("bias", bias, n_out)


def check_mlp_args(
    x: Tensor,
    w_gate_t: Tensor,
    w_up: Tensor,
    w_down_t: Tensor,
    thresholds: tuple[Tensor | float | None, Tensor | float | None, Tensor | float | None],
    biases: tuple[Tensor | None, Tensor | None, Tensor | None],
) -> None:
    """Raises ValueError unless the gated-MLP operands fit: ``x [..., d_model]``, ``w_gate_t [d_model, d_ff]``,
    ``w_up [d_ff, d_model]``, ``w_down_t [d_ff, d_model]``, thresholds ``(t_in [d_model], t_act [d_ff],
    t_down [d_ff])`` (or scalars), biases ``(b_gate [d_ff], b_up [d_ff], b_down [d_model])``."""
    if x.dim() < 1 or any(w.dim() != 2 for w in (w_gate_t, w_up, w_down_t)):
        raise ValueError("sparse_gated_mlp needs x [..., d_model] and 2-d weights")
    d_model, d_ff = w_gate_t.shape
    if _shape(w_up) != (d_ff, d_model) or _shape(w_down_t) != (d_ff, d_model) or x.shape[-1] != d_model:
        raise ValueError(
            f"inconsistent shapes: x {_shape(x)}, w_gate_t {_shape(w_gate_t)} (expected [d_model, d_ff]), "
            f"w_up {_shape(w_up)} and w_down_t {_shape(w_down_t)} (expected [d_ff, d_model])"
        )
    for name, t, n in zip(("t_in", "t_act", "t_down"), thresholds, (d_model, d_ff, d_ff), strict=True):
        check_threshold(name, t, n)
    for name, b, n in zip(("b_gate", "b_up", "b_down"), biases, (d_ff, d_ff, d_model), strict=True):
        check_bias(name, b, n)


def all_finite(w: Tensor) -> bool:
    """Whether ``w`` holds no NaN/inf; cached on the tensor until it changes (in place or its storage).

    A sparse kernel never reads a masked input's weight row, so a non-finite weight there would not turn
    the output NaN as ``0 * inf`` does in the reference: calls with such weights go to the reference. The
    scan runs once per weight (the first call), later calls cost a version check."""
    try:
        key = (w._version, w.data_ptr())
    except RuntimeError:  # an inference tensor has no version counter
        key = (-1, w.data_ptr())
    cached = w.__dict__.get("_actlab_finite")
    if cached is not None and cached[0] == key:
        return cached[1]
    ok = bool(torch.isfinite(w).all())
    w.__dict__["_actlab_finite"] = (key, ok)
    return ok


def threshold_args(t: Tensor | None, n: int) -> tuple[int, int, Tensor | None]:
    """(pointer, stride, keep-alive tensor) for a threshold: stride 0 broadcasts a scalar."""
    if t is None:
        return 0, 0, None
    if t.dtype is not torch.float32 or not t.is_contiguous():
        t = t.to(torch.float32).contiguous()
    if t.numel() == 1:
        return t.data_ptr(), 0, t
    if t.numel() != n:
        raise ValueError(f"threshold has {t.numel()} values, expected 1 or {n}")
    return t.data_ptr(), 1, t


def weight_args(w: Tensor) -> Tensor:
    """``w`` as rows the C side can walk (unit column stride, row stride >= columns), copied if needed.

    An expanded weight (row stride 0) or an overlapping view is valid for the reference but not for a
    raw-pointer row walk."""
    if w.stride(1) != 1 or w.stride(0) < w.shape[1]:
        return w.contiguous()
    return w


def rows_view(x: Tensor) -> tuple[Tensor, int, int]:
    """(tensor, rows, row stride) describing x as [rows, features] rows with unit stride for the C side.

    A contiguous x (the decode case) is used as is: a reshape costs more than the rest of the call."""
    n = x.shape[-1]
    if x.is_contiguous():
        return x, count_rows(x), n
    x2 = x.reshape(count_rows(x), n)  # [rows, in]; a view when possible
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < x2.shape[1]):
        x2 = x2.contiguous()
    ld = x2.stride(0) if x2.shape[0] > 1 else n  # a single row's stride is arbitrary
    return x2, x2.shape[0], ld


def linear_setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, wt, threshold, bias = inputs
    ctx.save_for_backward(x, wt, threshold)
    ctx.has_bias = bias is not None


def linear_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, Tensor | None]:
    """Gradients of the masked linear: masked inputs get none (straight through for kept ones)."""
    x, wt, threshold = ctx.saved_tensors
    keep = x.abs() > threshold
    grad_x = torch.where(keep, grad @ wt.t(), torch.zeros((), dtype=grad.dtype))  # [..., in]
    xm = torch.where(keep, x, torch.zeros((), dtype=x.dtype)).reshape(-1, x.shape[-1])  # [rows, in]
    grad_wt = xm.t() @ grad.reshape(-1, grad.shape[-1])  # [in, out]
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
    return grad_x, grad_wt, None, grad_bias
