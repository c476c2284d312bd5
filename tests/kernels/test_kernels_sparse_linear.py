"""sparse_linear: the compiled kernel against the pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import FAST_OPCHECKS, assert_matches, needs_ext

from actlab.kernels import ops
from actlab.kernels.reference import mask_below, sparse_linear_reference

pytestmark = needs_ext


def _scale(x: torch.Tensor, wt: torch.Tensor, t) -> torch.Tensor:
    return mask_below(x, t).abs().nan_to_num(0, 0, 0) @ wt.abs()


def _check(x, wt, t, bias=None):
    y = ops.sparse_linear(x, wt, t, bias)
    ref = sparse_linear_reference(x, wt, t, bias)
    assert y.shape == ref.shape
    assert_matches(y, ref, _scale(x, wt, t) + (0 if bias is None else bias.abs()))
    return y


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, ops.MAX_KERNEL_ROWS),
    n_in=st.integers(1, 200),
    n_out=st.integers(1, 300),
    sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]),
    per_channel=st.booleans(),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(rows, n_in, n_out, sparsity, per_channel, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n_in, generator=g)
    wt = torch.randn(n_in, n_out, generator=g)
    q = torch.tensor(sparsity)
    t = x.abs().quantile(q, dim=0) if per_channel else x.abs().quantile(q)
    bias = torch.randn(n_out, generator=g) if with_bias else None
    _check(x, wt, t, bias)


@pytest.mark.parametrize("n_out", [1, 7, 8, 15, 16, 17, 33, 1000, 1031, 2100])
def test_odd_widths_every_path(isa, threads, n_out):
    x = torch.randn(1, 131)
    wt = torch.randn(131, n_out)
    _check(x, wt, 0.5)
    _check(torch.randn(3, 131), wt, torch.rand(131))


def test_sparsity_extremes(isa):
    x = torch.randn(2, 64)
    wt = torch.randn(64, 96)
    bias = torch.randn(96)
    dense = _check(x, wt, -1.0, bias)  # nothing masked
    torch.testing.assert_close(dense, x @ wt + bias, rtol=1e-4, atol=1e-4)
    none_kept = _check(x, wt, 1e9, bias)  # everything masked: only the bias remains
    assert torch.equal(none_kept, bias.expand(2, 96))
    assert torch.equal(ops.sparse_linear(x, wt, 1e9), torch.zeros(2, 96))


def test_nan_and_inf_inputs(isa):
    x = torch.randn(3, 40)
    x[0, 3] = float("nan")  # masked: NaN compares false
    x[1, 5] = float("inf")  # kept: the output turns inf/nan exactly as the dense matmul would
    x[2, 7] = float("-inf")
    x[2, 9] = float("nan")
    wt = torch.randn(40, 24)
    wt[5, 0] = 0.0  # inf * 0 = nan
    y = _check(x, wt, 0.1)
    assert not y[0].isnan().any()
    assert y[1].isinf().sum() == 23 and y[1, 0].isnan()
    per_channel = torch.full((40,), 0.1)
    per_channel[7] = float("nan")  # a NaN threshold masks its channel
    _check(x, wt, per_channel)


def test_noncontiguous_and_batched_inputs():
    wt = torch.randn(48, 20)
    base = torch.randn(2, 3, 96)
    x = base[..., ::2]  # [2, 3, 48] with stride 2 in the last dim
    y = _check(x, wt, 0.4)
    assert y.shape == (2, 3, 20)
    _check(torch.randn(48, 4).t(), wt, 0.4)  # column-major rows
    _check(torch.randn(1, 48).expand(4, 48), wt, 0.4)  # zero row stride
    wt_view = torch.randn(48, 40)[:, :20]  # row stride 40 > 20
    _check(torch.randn(1, 48), wt_view, 0.4)
    _check(torch.randn(1, 48), torch.randn(20, 48).t(), 0.4)  # transposed view gets copied


def test_prefill_dense_path_matches_the_kernel():
    x = torch.randn(64, 80)
    x[0, 0] = float("nan")
    x[9, 3] = float("inf")
    wt, bias, t = torch.randn(80, 30), torch.randn(30), torch.rand(80)
    prefill = ops.sparse_linear(x, wt, t, bias)  # 64 rows: the dense matmul on the masked input
    chunks = torch.cat([ops.sparse_linear(c, wt, t, bias) for c in x.split(ops.MAX_KERNEL_ROWS)])  # the C kernel
    one_by_one = torch.cat([ops.sparse_linear(r[None], wt, t, bias) for r in x])
    scale = _scale(x, wt, t) + bias.abs()
    assert_matches(prefill, chunks, scale)
    assert_matches(prefill, one_by_one, scale)


def test_empty_input():
    y = ops.sparse_linear(torch.randn(0, 16), torch.randn(16, 8), 0.1)
    assert y.shape == (0, 8)


def test_bad_threshold_shape():
    with pytest.raises(ValueError, match="threshold"):
        ops.sparse_linear(torch.randn(1, 16), torch.randn(16, 8), torch.ones(5))


def test_autograd_goes_through_reference():
    x = torch.randn(1, 16, requires_grad=True)
    wt = torch.randn(16, 8)
    ops.sparse_linear(x, wt, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, ((x.detach().abs() > 0.5) * wt.sum(1)).reshape(1, 16))


def test_custom_op_registration():
    x, wt, t, b = torch.randn(2, 32), torch.randn(32, 12), torch.tensor(0.3), torch.randn(12)
    torch.library.opcheck(torch.ops.actlab.sparse_linear.default, (x, wt, t, b), test_utils=FAST_OPCHECKS)
    y = torch.ops.actlab.sparse_linear(x, wt, t, b)
    assert_matches(y, sparse_linear_reference(x, wt, t, b), _scale(x, wt, t) + b.abs())


def test_torch_compile_single_graph():
    wt, t = torch.randn(32, 12), torch.tensor(0.3)

    def f(x: torch.Tensor) -> torch.Tensor:
        return ops.sparse_linear(x, wt, t).relu()

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    x = torch.randn(1, 32)
    torch.testing.assert_close(compiled(x), f(x))


def test_zero_input_features():
    bias = torch.randn(8)
    assert torch.equal(ops.sparse_linear(torch.randn(1, 0), torch.randn(0, 8), 0.1, bias), bias[None])


def test_custom_op_autograd_matches_reference():
    x = torch.randn(3, 16, requires_grad=True)
    wt = torch.randn(16, 8, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    t = torch.tensor(0.5)
    torch.ops.actlab.sparse_linear(x, wt, t, b).square().sum().backward()
    grads = [v.grad.clone() for v in (x, wt, b)]
    for v in (x, wt, b):
        v.grad = None
    sparse_linear_reference(x, wt, t, b).square().sum().backward()
    for got, v in zip(grads, (x, wt, b), strict=True):
        torch.testing.assert_close(got, v.grad, rtol=1e-4, atol=1e-5)
