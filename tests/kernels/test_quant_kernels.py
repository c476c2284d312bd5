"""The bf16/int8/int4 sparse-input kernels against dequantize() + the reference, per ISA path.

Tolerance: the kernel computes the same products as ``mask(x) @ dequantize()`` but in another order
(``s_c * sum_i x_i q_ic`` over the kept rows of a block of scales, instead of ``sum_i x_i (s_c q_ic)``), so the two
differ by float32 rounding only: rtol 1e-4 and an absolute 1e-5 of the output scale ``sum |x_i w_ij|``
(kernel_helpers.assert_matches), the bound the fp32 kernel tests use.
"""

from __future__ import annotations

import pytest
import torch
from tests.kernels.kernel_helpers import assert_matches, needs_ext

from actlab.kernels import ops
from actlab.kernels.quant import (
    FORMAT_CODES,
    PackedWeight,
    int8_dot_active,
    pack,
    set_int8_dot,
    sparse_linear_packed,
)
from actlab.kernels.reference import sparse_linear_reference

pytestmark = needs_ext

QUANT = ("bf16", "int8", "int4")


def _case(n_in: int, n_out: int, B: int, sparsity: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    wt = torch.randn(n_in, n_out, generator=g)
    x = torch.randn(B, n_in, generator=g)
    if sparsity >= 1.0:
        return wt, x, float("inf")
    thr = float(x.abs().flatten().quantile(sparsity)) if sparsity > 0 else 0.0
    return wt, x, thr


@pytest.fixture(params=[True, False], ids=["int8dot", "floatdot"])
def dot(request):
    """int8/int4 with and without the integer dot products (the same where the CPU has no VNNI)."""
    old = set_int8_dot(request.param)
    yield request.param
    set_int8_dot(old)


def _rounding_bound(x: torch.Tensor, p: PackedWeight, t) -> torch.Tensor:
    """The int8-dot path's error bound: per block of inputs, its kept activations rounded to steps of
    max|x| / 127, so |error of y_c| <= sum over blocks of max|x| / 254 * sum_k |w_kc|."""
    xm = torch.where(x.abs() > torch.as_tensor(t), x, 0)[0]  # [in]
    w = p.dequantize().abs()
    blocks = torch.arange(p.rows) // p.group
    amax = torch.zeros(int(blocks.max()) + 1 if p.rows else 0).scatter_reduce(0, blocks, xm.abs(), "amax")
    return ((amax[blocks] / 254).unsqueeze(1) * w * (xm != 0).unsqueeze(1)).sum(0)


def _check(x: torch.Tensor, p: PackedWeight, thr, bias=None) -> None:
    y = sparse_linear_packed(x, p, thr, bias)
    t = -1.0 if thr is None else thr
    w = p.dequantize()
    ref = sparse_linear_reference(x, w, t, bias)
    scale = (torch.where(x.abs() > torch.as_tensor(t), x, 0).abs() @ w.abs()).max()
    assert y.shape == ref.shape
    if p.fmt in ("int8", "int4") and x.shape[0] == 1 and int8_dot_active() and bool(torch.isfinite(x).all()):
        bound = _rounding_bound(x, p, t)
        assert bool(((y - ref).abs()[0] <= bound * 1.01 + 1e-4 * ref.abs()[0] + 1e-5 * float(scale) + 1e-6).all())
        return
    assert_matches(y, ref, scale)


@pytest.mark.parametrize("fmt", QUANT)
@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(64, 96), (37, 200), (130, 33), (9, 1)])
def test_matches_dequantized_reference(isa, dot, fmt, B, sparsity, shape) -> None:
    n_in, n_out = shape
    wt, x, thr = _case(n_in, n_out, B, sparsity, seed=n_in * 7 + B)
    p = pack(wt, fmt)
    _check(x, p, thr, bias=torch.randn(n_out))


@pytest.mark.parametrize("fmt", QUANT)
def test_groups_threads_and_per_channel_thresholds(isa, threads, dot, fmt) -> None:
    wt, x, _ = _case(150, 700, 3, 0.0, seed=5)
    group = None if fmt == "bf16" else (32 if fmt == "int8" else 64)
    p = pack(wt, fmt, group=group)
    thr = torch.rand(150) * 1.5  # per channel: some inputs kept by one token only
    _check(x, p, thr)
    _check(x[:1], p, thr)
    _check(x, p, None)  # no threshold: dense through the same kernel


@pytest.mark.parametrize("fmt", QUANT)
def test_nan_input_dropped_and_inf_kept(fmt) -> None:
    wt, x, _ = _case(64, 64, 2, 0.0, seed=9)
    x[0, 3] = float("nan")
    p = pack(wt, fmt)
    y = sparse_linear_packed(x, p, 0.1)
    assert bool(torch.isfinite(y).all())
    _check(x, p, 0.1)
    x[1, 5] = float("inf")
    y = sparse_linear_packed(x, p, 0.1)
    assert bool(torch.isinf(y[1]).any() | torch.isnan(y[1]).any()) and bool(torch.isfinite(y[0]).all())


@pytest.mark.skipif(not int8_dot_active(), reason="no AVX-512 VNNI here: the int8-dot path does not run")
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_int8_dot_rounds_activations_only(fmt) -> None:
    # the integer path differs from the exact float path by the activation rounding, and only by it
    # group 300 with every input kept: a run longer than the int8 buffer (256) takes the float loop
    for group, sparsity in ((32, 0.5), (300, 0.0)):
        wt, x, thr = _case(300, 200, 1, sparsity, seed=4)
        p = pack(wt, fmt, group=group)
        old = set_int8_dot(False)
        exact = sparse_linear_packed(x, p, thr)
        set_int8_dot(True)
        fast = sparse_linear_packed(x, p, thr)
        set_int8_dot(old)
        diff = (fast - exact).abs()[0]
        assert bool((diff <= _rounding_bound(x, p, thr) * 1.01 + 1e-4).all())
        assert (float(diff.max()) > 0) == (group == 32)
    p = pack(wt, fmt)
    q = torch.zeros(1, 300)
    q[0, 7] = 2.0  # one kept value: it is 127 steps of itself, exactly
    torch.testing.assert_close(sparse_linear_packed(q, p, 0.5), q @ p.dequantize(), rtol=1e-5, atol=1e-5)


def test_dense_matches_plain_matmul_of_dequantized_weight() -> None:
    wt, x, _ = _case(256, 128, 1, 0.0, seed=3)
    old = set_int8_dot(False)  # exact products (the int8-dot path has its own bound test)
    try:
        for fmt in ("fp32", *QUANT):
            p = pack(wt, fmt)
            torch.testing.assert_close(sparse_linear_packed(x, p), x @ p.dequantize(), rtol=1e-4, atol=1e-4)
    finally:
        set_int8_dot(old)


def test_prefill_and_fallback_paths(monkeypatch, fresh_warnings) -> None:
    wt, x, _ = _case(64, 96, 20, 0.5, seed=1)  # 20 tokens: above MAX_KERNEL_ROWS, the reference runs
    p = pack(wt, "int4")
    _check(x, p, 0.7)
    monkeypatch.setenv(ops.DISABLE_ENV, "1")
    with pytest.warns(ops.ActlabKernelWarning):
        y = sparse_linear_packed(x[:1], p, 0.7)
    torch.testing.assert_close(y, sparse_linear_reference(x[:1], p.dequantize(), 0.7))


def _bad(p: PackedWeight, **changes) -> PackedWeight:
    fields = {k: getattr(p, k) for k in ("fmt", "data", "scales", "group", "rows", "cols", "ld")}
    fields.update(changes)
    return PackedWeight(**fields)


def test_bad_packed_weights_refused() -> None:
    wt, x, _ = _case(64, 96, 1, 0.0, seed=2)
    p = pack(wt, "int8")
    bad = [
        (p, {"group": 24}),  # 3 blocks of scales for 64 rows, but the scales hold 1
        (p, {"group": 0}),
        (p, {"ld": 64}),  # ld < cols
        (p, {"scales": None}),
        (p, {"scales": p.scales[:, :1].contiguous()}),
        (p, {"scales": p.scales.float()}),
        (p, {"data": p.data[:10]}),
        (p, {"data": p.data.t().contiguous().t()}),
        (p, {"fmt": "int4"}),  # int8 data read as nibbles
        (p, {"fmt": "q4_k"}),
        (pack(wt, "bf16"), {"scales": p.scales}),
    ]
    for base, change in bad:  # refused when built, so no kernel call can see it
        with pytest.raises(ValueError):
            _bad(base, **change)
    with pytest.raises(ValueError, match="PackedWeight"):
        sparse_linear_packed(x, p.dequantize(), 0.1)
    with pytest.raises(AttributeError):  # frozen: checked fields cannot drift from the tensors
        p.ld = 64
    with pytest.raises(ValueError, match="x must be"):
        sparse_linear_packed(torch.randn(1, 63), p, 0.1)
    with pytest.raises(ValueError, match="threshold"):
        sparse_linear_packed(x, p, torch.ones(3))
    with pytest.raises(ValueError, match="bias"):
        sparse_linear_packed(x, p, 0.1, torch.ones(95))


def test_c_struct_check_refuses_what_it_cannot_read() -> None:
    ext = ops._extension()
    p = pack(torch.randn(64, 96), "int4")
    args = list(p.c_args())
    assert ext.valid_wmat(*args)
    # (field index, bad value): group 0 or negative, scale_ld short of scales + minima, NULL scales,
    # ld < cols, ld not a multiple of 32 (nibble chunks), unknown format, NULL data
    for i, v in [(7, 0), (7, -32), (6, 191), (5, 0), (4, 64), (4, 112), (0, 9), (1, 0)]:
        bad = list(args)
        bad[i] = v
        assert not ext.valid_wmat(*bad), (i, v)
    q8 = list(pack(torch.randn(8, 48), "int8", group=16).c_args())
    assert ext.valid_wmat(*q8) and q8[0] == FORMAT_CODES["int8"]
    q8[6] = 47  # int8 needs one scale per column of ld
    assert not ext.valid_wmat(*q8)
