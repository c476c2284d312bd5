"""Weight formats through the modules: SparseLinear(weights=), apply_/install_kernels, quantize_linears_,
fake_quantize_ (the torch model the kernels must agree with), remove_ and greedy decoding."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import actlab
from actlab.kernels import ActlabKernelWarning
from actlab.kernels.linear import SparseLinear
from actlab.kernels.quant import pack, set_int8_dot
from actlab.kernels.quantize import fake_quantize_, quantize_linears_
from actlab.kernels.swap import kernel_modules, remove_kernels
from actlab.sparsity.calibrate import calibrate

QUANT = ("bf16", "int8", "int4")


@pytest.fixture(autouse=True)
def _exact_products():
    """These tests check the modules against fake quantisation, so the kernels keep exact products; the
    int8-dot path's activation rounding has its own bound tests (test_quant_kernels.py)."""
    old = set_int8_dot(False)
    yield
    set_int8_dot(old)


def _calib(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 259, (8, 32), generator=g)


@pytest.mark.parametrize("fmt", QUANT)
def test_sparse_linear_matches_fake_quantized_linear(fmt: str) -> None:
    torch.manual_seed(0)
    q, k = nn.Linear(64, 64), nn.Linear(64, 16)
    fused = SparseLinear.from_linear([q, k], threshold=0.4, weights=fmt)
    assert fused.packed.fmt == fmt and fused.weight_t is None
    assert fused.in_features == 64 and fused.out_features == 80 and f"weights={fmt}" in repr(fused)
    wq = pack(torch.cat([q.weight, k.weight]).detach().t(), fmt).dequantize().t()
    for rows in (1, 3, 20):  # kernel for decode sizes, the reference for prefill
        x = torch.randn(rows, 64)
        xm = torch.where(x.abs() > 0.4, x, 0)
        ref = nn.functional.linear(xm, wq, torch.cat([q.bias, k.bias]).detach())
        yq, yk = fused(x)
        torch.testing.assert_close(torch.cat([yq, yk], -1), ref, rtol=1e-4, atol=1e-4)
    q2, k2 = fused.to_linear()  # dequantized weights, not the originals
    torch.testing.assert_close(q2.weight, wq[:64])
    assert not torch.equal(q2.weight, q.weight)


def test_fp32_packed_and_no_threshold() -> None:
    lin = nn.Linear(32, 24)
    s = SparseLinear.from_linear(lin, threshold=None)
    assert s.packed.fmt == "fp32" and s.packed.data.data_ptr() == s.weight_t.data_ptr()
    x = torch.randn(1, 32)
    torch.testing.assert_close(s(x), lin(x).detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(s.to_linear().weight, lin.weight)
    with pytest.raises(ValueError, match="fp32, bf16, int8, int4"):
        SparseLinear.from_linear(lin, 0.1, weights="int3")


def _plan(model):
    return calibrate(model, actlab.TealConfig(0.5), _calib())


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_apply_with_weights_matches_fake_quant_model(fmt: str) -> None:
    model, _ = actlab.load_model("random:tiny-llama")
    plan = _plan(model)
    fake = copy.deepcopy(model)
    actlab.apply_(fake, plan)  # first: the plan's fingerprint is of the unrounded weights
    fake_quantize_(fake, fmt, lm_head=False)
    ids = torch.randint(3, 259, (1, 10))
    with torch.no_grad():
        want = fake(input_ids=ids).logits
        want_step = fake(input_ids=ids[:, :1]).logits
        actlab.apply_(model, plan, kernels=True, weights=fmt)
        mods = [m for _, m in kernel_modules(model) if isinstance(m, SparseLinear)]
        assert mods and all(m.weights == fmt for m in mods)
        got = model(input_ids=ids).logits
        got_step = model(input_ids=ids[:, :1]).logits  # one token: the quantized GEMV kernels
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got_step, want_step, rtol=1e-3, atol=1e-3)
    actlab.remove_(model)
    assert not kernel_modules(model) and isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)


def test_weights_need_kernels_and_a_known_format() -> None:
    model, _ = actlab.load_model("random:tiny-llama")
    plan = _plan(model)
    with pytest.raises(ValueError, match="kernels=True"):
        actlab.apply_(model, plan, weights="int8")
    with pytest.raises(ValueError, match="fp32, bf16, int8, int4"):
        actlab.apply_(model, plan, kernels=True, weights="q8_0")
    assert not kernel_modules(model)


def test_gated_mlp_stays_fp32_with_a_warning() -> None:
    model, _ = actlab.load_model("random:tiny-llama")
    plan = calibrate(model, actlab.CatsConfig(0.4), _calib())
    with pytest.warns(ActlabKernelWarning, match="stays fp32"):
        actlab.apply_(model, plan, kernels=True, weights="int8")
    lin = [m for _, m in kernel_modules(model) if isinstance(m, SparseLinear)]
    assert lin and all(m.weights == "int8" for m in lin)  # attention linears quantized, dense
    actlab.remove_(model)


@pytest.mark.parametrize("fmt", QUANT)
def test_quantize_linears_dense_matches_fake_quant(fmt: str) -> None:
    model, _ = actlab.load_model("random:tiny-llama")
    fake = fake_quantize_(copy.deepcopy(model), fmt, lm_head=True)
    quantize_linears_(model, fmt, lm_head=True)
    assert isinstance(model.lm_head, SparseLinear) and model.lm_head.threshold is None
    assert model.lm_head.weights == ("int8" if fmt == "int4" else fmt)  # int4 keeps an int8 lm_head
    ids = torch.randint(3, 259, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids[:, :1]).logits, fake(input_ids=ids[:, :1]).logits,
                                   rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(model(input_ids=ids).logits, fake(input_ids=ids).logits, rtol=1e-3, atol=1e-3)
    remove_kernels(model)
    assert isinstance(model.lm_head, nn.Linear)
    torch.testing.assert_close(model.lm_head.weight, fake.lm_head.weight)


def test_lm_head_format_can_be_chosen() -> None:
    model, _ = actlab.load_model("random:tiny-llama")
    quantize_linears_(model, "int4", lm_head=True, head_weights="int4")
    assert model.lm_head.weights == "int4" and model.model.layers[0].mlp.down_proj.weights == "int4"
    fake, _ = actlab.load_model("random:tiny-llama")
    w = fake.lm_head.weight.detach().clone()
    fake_quantize_(fake, "int8", head_weights="bf16")
    assert torch.equal(fake.lm_head.weight, w.bfloat16().float())
    with pytest.raises(ValueError, match="unknown weight format"):
        quantize_linears_(fake, "int4", lm_head=True, head_weights="q6_k")


def test_fake_quantize_changes_weights_within_the_format_bound() -> None:
    model, _ = actlab.load_model("random:tiny-llama")
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    fake_quantize_(model, "int4", lm_head=False)
    after = model.model.layers[0].mlp.down_proj.weight.detach()
    assert not torch.equal(before, after)
    assert float((before - after).abs().max()) <= float(before.abs().max()) / 8 * 1.01


def test_greedy_tokens_match_fake_quant_model() -> None:
    from actlab.engine import generate

    model, _ = actlab.load_model("random:tiny-llama")
    fake = fake_quantize_(copy.deepcopy(model), "int8", lm_head=False)
    quantize_linears_(model, "int8")
    ids = torch.randint(3, 259, (1, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = generate(model, ids, max_new_tokens=4)
        b = generate(fake, ids, max_new_tokens=4)
    # random weights give near-tied logits now and then; 4 tokens of int8 (error ~1e-6) stay equal
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape[1] == 12
