"""SparseLinear / SparseGatedMLP: numerics, exact restoration, prefill and the fallback path."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import assert_matches
from torch import nn

from actlab.kernels import ops
from actlab.kernels.linear import SparseGatedMLP, SparseLinear
from actlab.kernels.reference import mask_below


def _linear(n_in: int, n_out: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


def _mlp(d_model: int = 64, d_ff: int = 176, seed: int = 0) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    return (
        nn.Linear(d_model, d_ff, bias=False),
        nn.Linear(d_model, d_ff, bias=False),
        nn.Linear(d_ff, d_model, bias=False),
    )


def _masked_linear(lin: nn.Linear, x: torch.Tensor, t) -> torch.Tensor:
    return F.linear(mask_below(x, t), lin.weight, lin.bias)


def test_sparse_linear_matches_masked_linear():
    lin = _linear(96, 40)
    x = torch.randn(1, 1, 96)
    t = torch.rand(96)
    with torch.no_grad():
        ref = _masked_linear(lin, x, t)
        assert_matches(SparseLinear.from_linear(lin, t)(x), ref, ref.abs().max())
        assert_matches(SparseLinear.from_linear(lin, 0.4)(x), _masked_linear(lin, x, 0.4), ref.abs().max())


def test_sparse_linear_drops_the_original_weight():
    lin = _linear(32, 16)
    sparse = SparseLinear.from_linear(lin, 0.1)
    params = dict(sparse.named_parameters())
    assert set(params) == {"weight_t", "bias"}
    assert params["weight_t"].shape == (32, 16) and params["weight_t"].is_contiguous()
    assert params["weight_t"].untyped_storage().data_ptr() != lin.weight.untyped_storage().data_ptr()


@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_round_trip_is_bit_exact(bias):
    lin = _linear(48, 24, bias=bias)
    back = SparseLinear.from_linear(lin, torch.rand(48)).to_linear()
    assert type(back) is nn.Linear and back.weight.requires_grad == lin.weight.requires_grad
    assert torch.equal(back.weight, lin.weight) and back.weight.is_contiguous()
    assert (back.bias is None) if not bias else torch.equal(back.bias, lin.bias)


def test_fused_projections_split_and_restore():
    q, k, v = _linear(64, 64, seed=1), _linear(64, 16, bias=False, seed=2), _linear(64, 16, seed=3)
    fused = SparseLinear.from_linear([q, k, v], threshold=0.5)
    x = torch.randn(1, 64)
    with torch.no_grad():
        outs = fused(x)
        for out, lin in zip(outs, (q, k, v), strict=True):
            ref = _masked_linear(lin, x, 0.5)
            assert_matches(out, ref, ref.abs().max())
    for back, lin in zip(fused.to_linear(), (q, k, v), strict=True):
        assert torch.equal(back.weight, lin.weight)
        assert (back.bias is None) == (lin.bias is None)
        assert back.bias is None or torch.equal(back.bias, lin.bias)


def test_prefill_and_decode_agree():
    lin = _linear(80, 50)
    sparse = SparseLinear.from_linear(lin, 0.3)
    x = torch.randn(1, 20, 80)  # 20 tokens: dense path
    with torch.no_grad():
        full = sparse(x)
        steps = torch.cat([sparse(x[:, i : i + 1]) for i in range(20)], dim=1)  # one token each: kernel
    assert_matches(full, steps, full.abs().max())


def test_gated_mlp_matches_hf_style_mlp_and_round_trips():
    gate, up, down = _mlp()
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        dense = down(F.silu(gate(x)) * up(x))
        mlp = SparseGatedMLP.from_linears(gate, up, down, act="silu", t_act=None)
        assert_matches(mlp(x), dense, dense.abs().max())
        sparse = SparseGatedMLP.from_linears(gate, up, down, act="silu", t_act=1e-3)
        assert_matches(sparse(x), dense, dense.abs().max() * 100)  # masks almost nothing
    g2, u2, d2 = sparse.to_linears()
    for back, lin in zip((g2, u2, d2), (gate, up, down), strict=True):
        assert torch.equal(back.weight, lin.weight) and back.bias is None


def test_gated_mlp_rejects_mismatched_layers():
    gate, up, down = _mlp()
    with pytest.raises(ValueError):
        SparseGatedMLP.from_linears(gate, up, gate)
    with pytest.raises(ValueError, match="activation"):
        SparseGatedMLP.from_linears(gate, up, down, act="mish")


def test_fallback_warns_once_and_gives_the_same_numbers(monkeypatch, fresh_warnings):
    lin = _linear(64, 32)
    gate, up, down = _mlp()
    x = torch.randn(1, 64)
    sparse = SparseLinear.from_linear(lin, 0.4)
    mlp = SparseGatedMLP.from_linears(gate, up, down, t_act=0.05)
    with torch.no_grad():
        fast = (sparse(x), mlp(x))
        monkeypatch.setenv(ops.DISABLE_ENV, "1")
        assert not ops.available()
        with pytest.warns(ops.ActlabKernelWarning, match=ops.DISABLE_ENV):
            slow = (sparse(x), mlp(x))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one-time: a second call stays quiet
            sparse(x)
    for a, b in zip(fast, slow, strict=True):
        assert_matches(a, b, b.abs().max())


def test_missing_extension_warns(monkeypatch, fresh_warnings):
    monkeypatch.setattr(ops, "_ext", None)
    monkeypatch.setattr(ops, "_ext_error", "extension not built (test)")
    x, wt = torch.randn(1, 16), torch.randn(16, 8)
    with pytest.warns(ops.ActlabKernelWarning, match="not built"):
        y = ops.sparse_linear(x, wt, 0.2)
    torch.testing.assert_close(y, mask_below(x, 0.2) @ wt)


def test_non_fp32_falls_back_with_warning(fresh_warnings):
    lin = _linear(32, 16).to(torch.float64)
    sparse = SparseLinear.from_linear(lin, 0.2)
    x = torch.randn(1, 32, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(ops.ActlabKernelWarning, match="float32"):
        y = sparse(x)
    torch.testing.assert_close(y, _masked_linear(lin, x, 0.2))


def test_modules_export():
    sparse = SparseLinear.from_linear(_linear(32, 16), 0.2)
    x = torch.randn(1, 32)
    program = torch.export.export(sparse, (x,))
    assert "actlab.sparse_linear" in str(program.graph)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), sparse(x))


def test_kernel_weight_is_an_exact_aligned_copy():
    w = torch.randn(1024, 1536)  # 6 MiB: large enough for the huge-page layout
    wt = ops.kernel_weight(w.t())
    assert torch.equal(wt, w.t()) and wt.is_contiguous()
    if ops.available():
        assert wt.data_ptr() % (2 << 20) == 0
    small = torch.randn(8, 4)
    copy = ops.kernel_weight(small)
    assert torch.equal(copy, small) and copy.data_ptr() != small.data_ptr()
