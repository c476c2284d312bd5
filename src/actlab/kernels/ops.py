"""Sparse-input linear ops: the compiled CPU fast path, its torch.library registration, the fallback.

Two entry points per op:

* ``sparse_linear`` / ``sparse_gated_mlp``: what modules and users call. In eager mode they call the C
  extension directly (no dispatcher: this is the decode loop); while compiling or exporting they route
  through ``torch.ops.actlab.*`` so the op is one opaque node with a fake (meta) implementation.
* ``torch.ops.actlab.sparse_linear`` / ``torch.ops.actlab.sparse_gated_mlp``: the registered custom ops.

Whenever the extension cannot serve a call (not built, ``ACTLAB_DISABLE_KERNELS=1``, not CPU fp32, autograd
needed) the pure-PyTorch reference runs instead, with a one-time :class:`ActlabKernelWarning` when the
reason is that the kernels are unavailable. Inputs with more than ``MAX_KERNEL_ROWS`` tokens (prefill) use
a dense matmul on the masked input, which is faster there and has the same semantics.

NaN and inf (every path agrees, tested in ``tests/kernels/test_kernels_boundary.py``):

* a NaN input is always dropped (``|NaN| > t`` is false), whatever the threshold, even one that keeps
  everything else; a NaN threshold drops its channel;
* a kept +-inf input propagates as in a dense matmul (``inf * 0 = NaN``, ``inf - inf = NaN``);
* a NaN or inf *weight* propagates as in a dense layer fed the masked input, so ``0 * inf = NaN`` even in
  a masked row. The kernels never read masked rows, so a call whose weights are not all finite (checked
  once per weight tensor, again after it changes) runs the reference, with a one-time warning.

Bad calls (a bias that is not ``[out]``, a threshold that is not a scalar or ``[in]``, mismatched features)
raise ``ValueError`` before any pointer reaches C, on the kernel, reference and custom-op paths alike.
Outputs take the inputs' dtype and device, never torch's defaults.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import torch
from torch import Tensor

from actlab.kernels._args import (
    DISABLE_ENV,
    all_finite,
    check_linear_args,
    check_mlp_args,
    choose_route,
    count_rows,
    env_disabled,
    linear_backward,
    linear_setup_context,
    rows_view,
    threshold_args,
    weight_args,
)
from actlab.kernels.reference import (
    Activation,
    sparse_gated_mlp_reference,
    sparse_linear_reference,
)

__all__ = [
    "DISABLE_ENV",
    "MAX_KERNEL_ROWS",
    "ActlabKernelWarning",
    "Activation",
    "available",
    "isa",
    "kernel_weight",
    "sparse_gated_mlp",
    "sparse_gated_mlp_reference",
    "sparse_linear",
    "sparse_linear_reference",
]

# Tokens per call up to which the kernel runs (decode, small batches); above it a GEMM on the masked input.
# Measured (1 thread, 4096x11008, 50% per token, random masks so the union is ~all rows from 4 tokens):
# kernel 11 / 15 / 28 / 54 ms for 2 / 4 / 8 / 16 tokens against F.linear 24 / 42 / 52 / 77 ms. The kernel
# still won at 16 because MKL takes a slow path on AMD CPUs; elsewhere a GEMM catches up sooner, so the
# cut stays at 8 and prefill (hundreds of tokens) always goes to the GEMM.
MAX_KERNEL_ROWS = 8


class ActlabKernelWarning(UserWarning):
    """The compiled sparse kernels could not be used; results come from the (slower) reference."""


_ext: ModuleType | None = None
_ext_error: str | None = None
_warned: set[str] = set()


def _extension() -> ModuleType | None:
    """The compiled module, imported on first use (not at import time), or None."""
    global _ext, _ext_error
    if _ext is None and _ext_error is None:
        try:
            _ext = importlib.import_module("actlab.kernels._sparse")
        except ImportError as err:
            _ext_error = f"extension not built ({err}); reinstall with a C compiler: pip install -e ."
    return _ext


def available() -> bool:
    """Whether the compiled kernels will be used (built, importable, not disabled by the env var).

    Example:
        >>> from actlab.kernels import ops
        >>> isinstance(ops.available(), bool)
        True
    """
    return not env_disabled() and _extension() is not None


def isa() -> str:
    """Instruction-set path the kernels dispatch to (``avx512``, ``avx2``, ``generic``) or ``none``."""
    ext = _extension()
    return ext.get_isa() if ext is not None and available() else "none"


_HUGE_PAGE = 2 << 20


def kernel_weight(src: Tensor) -> Tensor:
    """A contiguous copy of ``src`` laid out for the kernels: large CPU weights get 2 MiB-aligned memory
    advised for transparent huge pages (``madvise``), because the transposed weight is read in row chunks
    spread over the whole matrix and 4 KiB pages make most of those chunks TLB misses.

    Always returns a new tensor with the values of ``src`` (bit-identical), on any device.

    Example:
        >>> w = torch.randn(64, 32)
        >>> torch.equal(kernel_weight(w.t()), w.t())
        True
    """
    ext = _extension()
    nbytes = src.numel() * src.element_size()
    if ext is None or src.device.type != "cpu" or nbytes < 2 * _HUGE_PAGE:
        return src.contiguous().clone() if src.is_contiguous() else src.contiguous()
    pad = _HUGE_PAGE // src.element_size()
    buf = torch.empty(src.numel() + pad, dtype=src.dtype)  # untouched until the copy below
    offset = (-buf.data_ptr()) % _HUGE_PAGE // src.element_size()
    out = buf[offset : offset + src.numel()].view(src.shape)
    ext.advise_hugepages(out.data_ptr(), nbytes)
    return out.copy_(src)


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"actlab sparse kernels unavailable: {reason}", ActlabKernelWarning, stacklevel=3)


def _why_not_kernel(weights: tuple[Tensor, ...], *tensors: Tensor | None) -> str | None:
    """None if the extension can run on these tensors, else the reason (for the warning)."""
    if env_disabled():
        return f"disabled by {DISABLE_ENV}=1"
    if _extension() is None:
        return _ext_error or "extension not built"
    for t in (*weights, *tensors):  # is_cpu / dtype: the cheap checks (t.device costs a microsecond)
        if t is not None and not (t.is_cpu and t.dtype is torch.float32):
            return f"kernels are CPU float32 only (got {t.dtype} on {t.device})"
    for w in weights:  # cached per weight: one scan on first use
        if not all_finite(w):
            return "a weight holds NaN or inf (the reference runs: masked rows propagate it as 0 * inf = NaN)"
    return None


def _linear_kernel(x: Tensor, wt: Tensor, threshold: Tensor, bias: Tensor | None) -> Tensor:
    """The C path; the caller checked shapes (check_linear_args), dtype and device. Output is a fresh
    contiguous [..., out] tensor with x's dtype and device (never torch's defaults, which C would not see)."""
    # Every line here runs once per layer per decoded token: cheap tensor queries only.
    n_in, n_out = wt.shape
    shape = x.shape
    if x.is_contiguous():
        x2, rows, x_ld = x, x.numel() // n_in if n_in else count_rows(x), n_in
    else:
        x2, rows, x_ld = rows_view(x)
    wt = weight_args(wt)
    if threshold.dtype is torch.float32 and threshold.is_contiguous():
        thr_ptr, thr_stride = threshold.data_ptr(), int(threshold.numel() != 1)
        if thr_stride and threshold.numel() != n_in:
            raise ValueError(f"threshold has {threshold.numel()} values, expected 1 or {n_in}")
    else:
        thr_ptr, thr_stride, threshold = threshold_args(threshold, n_in)
    bias = bias if bias is None or bias.is_contiguous() else bias.contiguous()
    # [..., out], float32 CPU like x (checked by the caller)
    y = x.new_empty((rows, n_out) if len(shape) == 2 else shape[:-1] + (n_out,))
    _ext.sparse_linear(  # type: ignore[union-attr]
        x2.data_ptr(),
        rows,
        n_in,
        x_ld,
        wt.data_ptr(),
        n_out,
        wt.stride(0),
        thr_ptr,
        thr_stride,
        0 if bias is None else bias.data_ptr(),
        y.data_ptr(),
        n_out,
        torch.get_num_threads(),
    )
    return y


def _linear_impl(x: Tensor, wt: Tensor, threshold: Tensor, bias: Tensor | None) -> Tensor:
    check_linear_args(x, wt, threshold, bias)
    n_in = wt.shape[0]
    if (x.numel() // n_in if n_in else count_rows(x)) <= MAX_KERNEL_ROWS:
        reason = _why_not_kernel((wt,), x, threshold, bias)
        if reason is None:
            return _linear_kernel(x, wt, threshold, bias)
        _warn_once(reason)
    return sparse_linear_reference(x, wt, threshold, bias)


def sparse_linear(x: Tensor, wt: Tensor, threshold: Tensor | float, bias: Tensor | None = None) -> Tensor:
    """``y = mask(x, threshold) @ wt + bias`` reading only the rows of ``wt`` whose input is kept.

    Args:
        x: ``[..., in]`` float32 CPU input, any strides.
        wt: ``[in, out]`` weight **transposed** relative to ``nn.Linear.weight`` (unit stride in ``out``).
        threshold: scalar or ``[in]``; input ``i`` is kept where ``|x_i| > t_i`` (NaN is masked). A tensor
            avoids a per-call conversion.
        bias: optional ``[out]``.

    Returns:
        ``[..., out]`` with the inputs' dtype and device. Semantics (NaN/inf included):
        :func:`sparse_linear_reference`.

    Raises:
        ValueError: shapes that do not fit (``x``'s features vs ``wt``, a threshold not scalar or ``[in]``,
            a bias not ``[out]``), on every path alike.

    Example:
        >>> lin = torch.nn.Linear(64, 32)
        >>> x = torch.randn(1, 64)
        >>> y = sparse_linear(x, lin.weight.detach().t().contiguous(), 0.5, lin.bias.detach())
        >>> y.shape
        torch.Size([1, 32])
    """
    if not isinstance(threshold, Tensor):
        threshold = torch.tensor(float(threshold), dtype=torch.float32, device=x.device)
    route = choose_route(x, wt, threshold, bias)
    if route == "direct":
        return _linear_impl(x, wt, threshold, bias)
    if route == "reference":
        return sparse_linear_reference(x, wt, threshold, bias)
    return torch.ops.actlab.sparse_linear(x, wt, threshold, bias)


@torch.library.custom_op("actlab::sparse_linear", mutates_args=())
def _sparse_linear_op(x: Tensor, wt: Tensor, threshold: Tensor, bias: Tensor | None) -> Tensor:
    return _linear_impl(x, wt, threshold, bias)


@_sparse_linear_op.register_fake
def _(x: Tensor, wt: Tensor, threshold: Tensor, bias: Tensor | None) -> Tensor:
    check_linear_args(x, wt, threshold, bias)
    return x.new_empty(*x.shape[:-1], wt.shape[1])


_sparse_linear_op.register_autograd(linear_backward, setup_context=linear_setup_context)


def _mlp_kernel(
    x: Tensor,
    wg_t: Tensor,
    wu: Tensor,
    wd_t: Tensor,
    bg: Tensor | None,
    bu: Tensor | None,
    bd: Tensor | None,
    t_in: Tensor | None,
    t_act: Tensor | None,
    t_down: Tensor | None,
    act: int,
) -> Tensor:
    x2, rows, x_ld = rows_view(x)
    wg_t, wu, wd_t = (weight_args(w) for w in (wg_t, wu, wd_t))
    d_model, d_ff = wg_t.shape
    bg, bu, bd = (None if b is None else b.contiguous() for b in (bg, bu, bd))
    p_in, s_in, _k1 = threshold_args(t_in, d_model)
    p_act, s_act, _k2 = threshold_args(t_act, d_ff)
    p_down, s_down, _k3 = threshold_args(t_down, d_ff)
    y = x.new_empty(x.shape)  # [..., d_model], float32 CPU like x (checked by the caller)
    _ext.gated_mlp(  # type: ignore[union-attr]
        x2.data_ptr(),
        rows,
        d_model,
        x_ld,
        wg_t.data_ptr(),
        wg_t.stride(0),
        wu.data_ptr(),
        wu.stride(0),
        wd_t.data_ptr(),
        wd_t.stride(0),
        d_ff,
        *(0 if b is None else b.data_ptr() for b in (bg, bu, bd)),
        p_in,
        s_in,
        p_act,
        s_act,
        p_down,
        s_down,
        int(act),
        y.data_ptr(),
        d_model,
        torch.get_num_threads(),
    )
    return y


def _mlp_impl(
    x: Tensor,
    wg_t: Tensor,
    wu: Tensor,
    wd_t: Tensor,
    bg: Tensor | None,
    bu: Tensor | None,
    bd: Tensor | None,
    t_in: Tensor | None,
    t_act: Tensor | None,
    t_down: Tensor | None,
    act: int,
) -> Tensor:
    check_mlp_args(x, wg_t, wu, wd_t, (t_in, t_act, t_down), (bg, bu, bd))
    if count_rows(x) <= MAX_KERNEL_ROWS:
        reason = _why_not_kernel((wg_t, wu, wd_t), x, bg, bu, bd, t_in, t_act, t_down)
        if reason is None:
            return _mlp_kernel(x, wg_t, wu, wd_t, bg, bu, bd, t_in, t_act, t_down, act)
        _warn_once(reason)
    return sparse_gated_mlp_reference(x, wg_t, wu, wd_t, act, t_act, t_in, t_down, (bg, bu, bd))


def sparse_gated_mlp(
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
    """Fused gated MLP that skips the up and down weight rows of neurons whose activation is small.

    Neuron ``j`` is kept where ``|act(gate_j)| > t_act_j``; only kept rows of ``w_up`` (row-major) and of
    ``w_down_t`` are read. ``t_in`` optionally masks the input of gate and up (TEAL's ``gate_up_in``) so
    the gate reads only kept rows too; ``t_down`` optionally masks ``h`` again before the down projection.

    Args:
        x: ``[..., d_model]`` float32 CPU input.
        w_gate_t: ``[d_model, d_ff]`` gate weight transposed.
        w_up: ``[d_ff, d_model]`` up weight as ``nn.Linear`` stores it (not transposed).
        w_down_t: ``[d_ff, d_model]`` down weight transposed.
        act: ``"silu"``, ``"gelu_tanh"`` or ``"relu"`` (or any alias of theirs in :mod:`actlab.functions`),
            or an :class:`Activation`.
        t_act, t_in, t_down: scalar or per-channel thresholds; ``None`` disables that mask.
        biases: optional ``(b_gate, b_up, b_down)``.

    Returns:
        ``[..., d_model]`` with the inputs' dtype and device. Semantics (NaN/inf included):
        :func:`sparse_gated_mlp_reference`.

    Raises:
        ValueError: operands whose shapes do not fit (see the argument shapes), on every path alike.

    Example:
        >>> g, u, d = (torch.nn.Linear(64, 256, bias=False), torch.nn.Linear(64, 256, bias=False),
        ...            torch.nn.Linear(256, 64, bias=False))
        >>> wg_t, wd_t = g.weight.detach().t().contiguous(), d.weight.detach().t().contiguous()
        >>> y = sparse_gated_mlp(torch.randn(1, 64), wg_t, u.weight.detach(), wd_t, "silu", t_act=0.05)
        >>> y.shape
        torch.Size([1, 64])
    """
    code = int(Activation.parse(act))
    t_in, t_act, t_down = (
        t if t is None or isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float32, device=x.device)
        for t in (t_in, t_act, t_down)
    )
    args = (x, w_gate_t, w_up, w_down_t, *biases, t_in, t_act, t_down, code)
    route = choose_route(x, w_gate_t, w_up, w_down_t, *biases)
    if route == "direct":
        return _mlp_impl(*args)
    if route == "reference":
        return sparse_gated_mlp_reference(x, w_gate_t, w_up, w_down_t, code, t_act, t_in, t_down, biases)
    return torch.ops.actlab.sparse_gated_mlp(*args)


@torch.library.custom_op("actlab::sparse_gated_mlp", mutates_args=())
def _sparse_gated_mlp_op(
    x: Tensor,
    w_gate_t: Tensor,
    w_up: Tensor,
    w_down_t: Tensor,
    b_gate: Tensor | None,
    b_up: Tensor | None,
    b_down: Tensor | None,
    t_in: Tensor | None,
    t_act: Tensor | None,
    t_down: Tensor | None,
    act: int,
) -> Tensor:
    return _mlp_impl(x, w_gate_t, w_up, w_down_t, b_gate, b_up, b_down, t_in, t_act, t_down, act)


@_sparse_gated_mlp_op.register_fake
def _(
    x: Tensor,
    w_gate_t: Tensor,
    w_up: Tensor,
    w_down_t: Tensor,
    b_gate: Tensor | None,
    b_up: Tensor | None,
    b_down: Tensor | None,
    t_in: Tensor | None,
    t_act: Tensor | None,
    t_down: Tensor | None,
    act: int,
) -> Tensor:
    check_mlp_args(x, w_gate_t, w_up, w_down_t, (t_in, t_act, t_down), (b_gate, b_up, b_down))
    return x.new_empty(x.shape)
