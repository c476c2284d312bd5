"""sparse_gated_mlp: the fused CATS-style kernel against its pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import FAST_OPCHECKS, assert_matches, needs_ext

from actlab.kernels import ops
from actlab.kernels.reference import ACT_FUNCTIONS, Activation, sparse_gated_mlp_reference

pytestmark = needs_ext


def _weights(d_model: int, d_ff: int, g: torch.Generator, bias: bool = False):
    s_in, s_ff = d_model**-0.5, d_ff**-0.5
    w = (
        torch.randn(d_model, d_ff, generator=g) * s_in,  # w_gate_t
        torch.randn(d_ff, d_model, generator=g) * s_in,  # w_up
        torch.randn(d_ff, d_model, generator=g) * s_ff,  # w_down_t
    )
    b = tuple(torch.randn(n, generator=g) * 0.1 for n in (d_ff, d_ff, d_model)) if bias else (None,) * 3
    return w, b


def _safe_threshold(values: torch.Tensor, fraction: float) -> float:
    """A threshold masking about `fraction` of |values|, placed in the widest gap nearby so the kernel's
    rounding (a different summation order) cannot flip a neuron across it."""
    v = values.abs().flatten().nan_to_num(0.0).sort().values
    if fraction <= 0:
        return -1.0
    if fraction >= 1:
        return float(v[-1]) + 1.0
    if len(v) < 2:
        return float(v[0]) / 2
    k = int(fraction * (len(v) - 1))
    lo, hi = max(k - 8, 0), min(k + 8, len(v) - 1)
    gaps = v[lo + 1 : hi + 1] - v[lo:hi]
    j = lo + int(gaps.argmax())
    return float((v[j] + v[j + 1]) / 2)


def _check(x, w, b, act, t_act, t_in=None, t_down=None):
    y = ops.sparse_gated_mlp(x, *w, act, t_act, t_in, t_down, b)
    ref = sparse_gated_mlp_reference(x, *w, act, t_act, t_in, t_down, b)
    assert y.shape == ref.shape == x.shape
    assert_matches(y, ref, ref.abs().nan_to_num(0, 0, 0).max() + 1e-3)
    return y


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 4),
    d_model=st.integers(1, 96),
    d_ff=st.integers(1, 300),
    act=st.sampled_from(list(Activation)),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    use_t_in=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(rows, d_model, d_ff, act, sparsity, use_t_in, bias, seed):
    g = torch.Generator().manual_seed(seed)
    w, b = _weights(d_model, d_ff, g, bias)
    x = torch.randn(rows, d_model, generator=g)
    t_in = 0.3 if use_t_in else None
    xm = torch.where(x.abs() > 0.3, x, 0.0) if use_t_in else x
    gate = xm @ w[0] + (0 if b[0] is None else b[0])
    t_act = _safe_threshold(ACT_FUNCTIONS[act](gate), sparsity)
    _check(x, w, b, act, t_act, t_in)


@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh", "relu"])
def test_every_path_with_all_masks(isa, threads, act):
    g = torch.Generator().manual_seed(0)
    w, b = _weights(200, 700, g, bias=True)
    x = torch.randn(3, 200, generator=g)
    a = ACT_FUNCTIONS[Activation.parse(act)](x @ w[0] + b[0])
    t_act = torch.full((700,), _safe_threshold(a, 0.5))
    h = torch.where(a.abs() > t_act, a * (x @ w[1].t() + b[1]), 0.0)
    t_down = _safe_threshold(h[h != 0], 0.3)
    _check(x, w, b, act, t_act, t_in=None, t_down=t_down)
    _check(x[:1], w, b, act, t_act)


def test_no_act_threshold_is_the_dense_mlp():
    g = torch.Generator().manual_seed(1)
    w, _ = _weights(64, 160, g)
    x = torch.randn(1, 64, generator=g)
    y = _check(x, w, (None,) * 3, "silu", None)
    dense = (F.silu(x @ w[0]) * (x @ w[1].t())) @ w[2]
    torch.testing.assert_close(y, dense, rtol=1e-4, atol=1e-5)


def test_everything_masked_leaves_the_down_bias():
    g = torch.Generator().manual_seed(2)
    w, b = _weights(32, 64, g, bias=True)
    y = ops.sparse_gated_mlp(torch.randn(2, 32, generator=g), *w, "silu", t_act=1e9, biases=b)
    assert torch.equal(y, b[2].expand(2, 32))


def test_nan_and_inf_inputs():
    g = torch.Generator().manual_seed(3)
    w, _ = _weights(48, 128, g)
    x = torch.randn(2, 48, generator=g)
    x[0, 1] = float("nan")  # masked by t_in, so row 0 stays finite
    x[1, 2] = float("inf")
    y = _check(x, w, (None,) * 3, "silu", 0.05, t_in=0.2)
    assert y[0].isfinite().all()


def test_prefill_dense_path_matches_the_kernel():
    g = torch.Generator().manual_seed(4)
    w, b = _weights(32, 96, g, bias=True)
    x = torch.randn(2, 20, 32, generator=g)  # 40 tokens: the dense path
    x[0, 3, 5] = float("nan")  # masked by t_in on both paths
    gate = torch.where(x.abs() > 0.1, x, 0.0) @ w[0] + b[0]
    t_act = _safe_threshold(ACT_FUNCTIONS[Activation.GELU_TANH](gate), 0.5)
    args = (*w, "gelu_tanh", t_act, 0.1, None, b)
    prefill = ops.sparse_gated_mlp(x, *args)
    steps = torch.stack(  # each token alone (the C kernel), then a few tokens per call
        [torch.cat([ops.sparse_gated_mlp(x[i, j : j + 1], *args) for j in range(20)]) for i in range(2)]
    )
    chunks = torch.cat([ops.sparse_gated_mlp(c, *args) for c in x.reshape(40, 32).split(4)]).reshape(x.shape)
    scale = prefill.abs().nan_to_num(0, 0, 0).max() + 1e-3
    assert_matches(prefill, steps, scale)
    assert_matches(prefill, chunks, scale)


def test_custom_op_registration():
    g = torch.Generator().manual_seed(5)
    w, b = _weights(16, 40, g, bias=True)
    x = torch.randn(1, 16, generator=g)
    args = (x, *w, *b, None, torch.tensor(0.05), None, int(Activation.SILU))
    torch.library.opcheck(torch.ops.actlab.sparse_gated_mlp.default, args, test_utils=FAST_OPCHECKS)
