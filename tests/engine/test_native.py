"""The native decode step (actlab.engine.native) against HF generate and the torch engine."""

from __future__ import annotations

import warnings

import pytest
import torch

import actlab
from actlab.engine import generate
from actlab.engine.native import NativeDecoder, generate_native, native_unsupported
from actlab.kernels.quant import set_int8_dot
from actlab.sparsity.calibrate import calibrate

pytestmark = pytest.mark.skipif(native_unsupported(actlab.load_model("random:tiny-llama")[0]) is not None,
                                reason="native extension not built")

IDS = torch.tensor([[1, 72, 105, 9, 33, 200]])


def _hf(model, ids, n):
    # no min_new_tokens: it masks eos, which the native engine (like generate) may pick
    return model.generate(ids, max_new_tokens=n, do_sample=False)


def _native(model, ids, n):
    return generate_native(model, ids, n, eos_token_id=model.generation_config.eos_token_id).tokens


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mistral"])
def test_greedy_tokens_equal_hf(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    assert torch.equal(_native(model, IDS, 20), _hf(model, IDS, 20))


def test_qwen2_preset_has_qkv_bias():  # the bias path is exercised above
    model, _ = actlab.load_model("random:tiny-qwen2")
    assert model.model.layers[0].self_attn.q_proj.bias is not None


def test_logits_close_to_hf_forward():
    # fp32 throughout; only the summation order differs (d=64 terms), so errors stay ~1e-6
    model, _ = actlab.load_model("random:tiny-qwen3")
    dec = NativeDecoder(model, 16)
    ids = IDS[0]
    with torch.no_grad():
        want = model(input_ids=IDS).logits[0]
    for p in range(len(ids)):
        tok = dec.run(ids[p : p + 1], p, logits=True)
        torch.testing.assert_close(dec.logits, want[p], rtol=1e-4, atol=1e-4)
        assert tok == int(want[p].argmax())


@pytest.mark.parametrize(
    "config", [actlab.TealConfig(0.5), actlab.CatsConfig(0.4)], ids=lambda c: c.method
)
def test_plan_through_kernels_equals_torch_engine(config):
    model, _ = actlab.load_model("random:tiny-llama")
    calib = torch.randint(3, 259, (8, 32), generator=torch.Generator().manual_seed(0))
    plan = calibrate(model, config, calib)
    dense = generate_native(model, IDS, 16).tokens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actlab.apply_(model, plan, kernels=True)
    assert native_unsupported(model) is None
    want = generate(model, IDS, 16).tokens
    got = generate_native(model, IDS, 16).tokens
    assert torch.equal(got, want)
    assert not torch.equal(got, dense) or config.method == "cats"  # the plan is really applied (teal 50%)


def test_unsupported_architecture_gives_reason():
    model, _ = actlab.load_model("random:tiny-gpt2")
    reason = native_unsupported(model)
    assert reason is not None and "gpt2" in reason
    with pytest.raises(NotImplementedError, match="gpt2"):
        NativeDecoder(model, 8)


def test_masking_plan_hooks_are_refused():
    model, _ = actlab.load_model("random:tiny-llama")
    plan = calibrate(model, actlab.TealConfig(0.5), torch.randint(3, 259, (4, 16)))
    actlab.apply_(model, plan)  # masking path: Python hooks
    assert "hooks" in native_unsupported(model)


def test_bad_inputs_raise_value_error():
    model, _ = actlab.load_model("random:tiny-llama")
    with pytest.raises(ValueError, match="batch 1"):
        generate_native(model, IDS.repeat(2, 1), 4)
    dec = NativeDecoder(model, 8)
    with pytest.raises(ValueError, match="max_len"):
        generate_native(model, IDS, 4, decoder=dec)
    with pytest.raises(NotImplementedError, match="greedily"):
        generate_native(model, IDS, 4, do_sample=True)


def test_eos_stops_early():
    model, _ = actlab.load_model("random:tiny-llama")
    full = generate_native(model, IDS, 12).tokens
    stop = int(full[0, IDS.shape[1] + 3])
    out = generate_native(model, IDS, 12, eos_token_id=stop)
    first = (full[0, IDS.shape[1] :] == stop).nonzero()[0].item()
    assert torch.equal(out.tokens[0], full[0, : IDS.shape[1] + first + 1])


@pytest.mark.slow
def test_smollm2_32_tokens_equal_hf():
    model, tok = actlab.load_model("smollm2-135m")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert torch.equal(_native(model, ids, 32), _hf(model, ids, 32))


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_quantized_plan_equals_torch_engine(fmt):
    # the same SparseLinear.packed weights through actlab_sparse_linear_w: same tokens as the torch engine
    model, _ = actlab.load_model("random:tiny-llama")
    calib = torch.randint(3, 259, (8, 32), generator=torch.Generator().manual_seed(0))
    plan = calibrate(model, actlab.TealConfig(0.5), calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actlab.apply_(model, plan, kernels=True, weights=fmt)
    # exact products: the torch engine prefills through the reference, which keeps the activations in
    # float, where the native engine's int8-dot path would round them
    old = set_int8_dot(False)
    try:
        assert torch.equal(generate_native(model, IDS, 16).tokens, generate(model, IDS, 16).tokens)
    finally:
        set_int8_dot(old)
