"""Stateless helpers of :mod:`actlab.kernels.ops`: where a call goes, how tensors become the extension's
raw-pointer arguments, and the autograd formula of the registered linear op.

The marshalling runs once per layer per decoded token, so it uses only the cheapest tensor queries
(``is_contiguous``, ``data_ptr``, ``numel``; not ``device`` or ``reshape``).
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
