"""Plans, sites and capture through wrappers: PEFT LoRA, torch.compile, DDP / DataParallel."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import actlab
from actlab.models.wrappers import base_layer, is_compiled, unwrap
from actlab.sparsity.apply import masked_modules
from actlab.sparsity.fingerprint import model_fingerprint


def _ids(model, n=2, seq_len=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (n, seq_len), generator=g)


@pytest.fixture
def model_and_plan():
    model, _ = actlab.load_model("random:tiny-llama")
    plan = actlab.calibrate(model, actlab.TealConfig(0.5), _ids(model, 8, 32, seed=0))
    return model, plan


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_unwrap_sees_through_each_wrapper_and_names_the_path():
    lin = nn.Linear(2, 2)
    assert unwrap(lin) == (lin, "")
    inner, prefix = unwrap(nn.DataParallel(nn.DataParallel(lin)))
    assert inner is lin and prefix == "module.module"
    compiled = torch.compile(lin, backend="eager")
    assert unwrap(compiled) == (lin, "_orig_mod") and is_compiled(compiled) and not is_compiled(lin)
    assert base_layer(lin) is lin


def test_sites_and_capture_resolve_through_data_parallel(model_and_plan):
    model, _ = model_and_plan
    wrapped = nn.DataParallel(model)  # no GPU: forwards to the module itself
    assert actlab.resolve_sites(wrapped).keys() == actlab.resolve_sites(model).keys()
    assert model_fingerprint(wrapped) == model_fingerprint(model)
    with actlab.capture(wrapped, "layers.0.mlp.down_in") as cap:
        wrapped(_ids(model))
    assert cap.tensors["layers.0.mlp.down_in"].shape[-1] == model.config.intermediate_size


def test_plan_through_ddp_equals_the_plain_model(model_and_plan, tmp_path):
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    model, plan = model_and_plan
    ids = _ids(model)
    actlab.apply_(model, plan)
    expected = _logits(model, ids)
    actlab.remove_(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        actlab.apply_(ddp, plan)
        assert masked_modules(ddp)
        torch.testing.assert_close(_logits(ddp, ids), expected, rtol=0, atol=0)
        actlab.remove_(ddp)
        assert not masked_modules(ddp)
    finally:
        dist.destroy_process_group()


def _lora(model):
    peft = pytest.importorskip("peft")
    # init_lora_weights=False: random A and B, so the LoRA branch changes the output and its mask matters
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return peft.get_peft_model(model, config)


def test_peft_lora_plan_masks_base_and_lora_inputs_and_trains_only_lora(model_and_plan):
    model, plan = model_and_plan
    ids = _ids(model)
    lora = _lora(model)
    dense = _logits(lora, ids)
    # reference: LoRA merged into a copy of the weights, the same plan applied there (mask(x) W' = base + lora)
    merged = copy.deepcopy(lora).merge_and_unload()
    merged_plan = copy.copy(plan)
    merged_plan.model = model_fingerprint(merged)
    actlab.apply_(merged, merged_plan)
    expected = _logits(merged, ids)

    actlab.apply_(lora, plan)  # the plan of the base model fits: the fingerprint reads the base layers
    try:
        q = "model.layers.0.self_attn.q_proj"
        assert type(unwrap(lora)[0].get_submodule(q)).__module__.startswith("peft")
        assert q in dict(masked_modules(lora))  # the mask sits on the LoRA layer, not its base_layer
        masked = _logits(lora, ids)
        assert not torch.allclose(masked, dense)
        torch.testing.assert_close(masked, expected, rtol=1e-4, atol=1e-5)

        thresholds = {k: v.clone() for k, v in lora.state_dict().items() if "actlab_sparsity" in k}
        assert thresholds
        trainable = [p for p in lora.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trainable, lr=0.1)
        before = {n: p.detach().clone() for n, p in lora.named_parameters()}
        out = lora(ids, labels=ids)
        out.loss.backward()
        with_grad = [n for n, p in lora.named_parameters() if p.grad is not None]
        assert with_grad and all("lora_" in n for n in with_grad)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
        opt.step()
        changed = {n for n, p in lora.named_parameters() if not torch.equal(p.detach(), before[n])}
        assert changed == set(with_grad)
        now = lora.state_dict()
        assert all(torch.equal(now[k], v) for k, v in thresholds.items())  # buffers are not trained
    finally:
        actlab.remove_(lora)
    assert not any("actlab_sparsity" in k for k in lora.state_dict())


def test_calibrating_a_peft_model_calibrates_the_model_inside(model_and_plan):
    model, plan = model_and_plan
    lora = _lora(copy.deepcopy(model))
    calib = _ids(model, 8, 32, seed=0)
    with torch.no_grad():  # LoRA weights that are not zero change the activations the thresholds come from
        for n, p in lora.named_parameters():
            if "lora_" in n:
                p.zero_()
    again = actlab.calibrate(lora, actlab.TealConfig(0.5), calib)
    assert [e.key for e in again.entries] == [e.key for e in plan.entries]
    assert all(torch.allclose(a.threshold, b.threshold) for a, b in zip(again.entries, plan.entries, strict=True))


def test_compiled_model_with_a_plan_gives_the_eager_logits(model_and_plan):
    model, plan = model_and_plan
    ids = _ids(model)
    dense = _logits(model, ids)
    actlab.apply_(model, plan)
    eager = _logits(model, ids)
    actlab.remove_(model)
    compiled = torch.compile(model, backend="aot_eager")  # inductor: see the slow test below
    torch.testing.assert_close(_logits(compiled, ids), dense, rtol=1e-4, atol=1e-5)  # compiled dense first
    actlab.apply_(compiled, plan)  # hooks added after a compiled run: apply_ drops the stale graphs
    try:
        torch.testing.assert_close(_logits(compiled, ids), eager, rtol=1e-4, atol=1e-5)
    finally:
        actlab.remove_(compiled)
    torch.testing.assert_close(_logits(compiled, ids), dense, rtol=1e-4, atol=1e-5)


def test_a_model_compiled_in_place_sees_a_plan_applied_after_its_first_run(model_and_plan):
    model, plan = model_and_plan
    ids = _ids(model)
    actlab.apply_(model, plan)
    eager = _logits(model, ids)
    actlab.remove_(model)
    model.compile(backend="aot_eager")  # nn.Module.compile: no wrapper, the module itself runs compiled
    try:
        assert is_compiled(model)
        dense = _logits(model, ids)
        actlab.apply_(model, plan)
        torch.testing.assert_close(_logits(model, ids), eager, rtol=1e-4, atol=1e-5)
        actlab.remove_(model)
        torch.testing.assert_close(_logits(model, ids), dense, rtol=0, atol=0)
    finally:
        actlab.remove_(model)
        torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_compiled_model_with_a_plan_gives_the_eager_logits(model_and_plan):
    model, plan = model_and_plan
    ids = _ids(model)
    actlab.apply_(model, plan)
    try:
        eager = _logits(model, ids)
        try:
            got = _logits(torch.compile(model, backend="inductor"), ids)
        except Exception as e:  # no C compiler, or an inductor that cannot build on this machine
            pytest.skip(f"torch.compile(backend='inductor') cannot run here: {type(e).__name__}: {e}"[:300])
        torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-5)
    finally:
        actlab.remove_(model)
        torch._dynamo.reset()


def test_plan_on_an_accelerate_prepared_model(model_and_plan):
    accelerate = pytest.importorskip("accelerate")
    model, plan = model_and_plan
    ids = _ids(model)
    actlab.apply_(model, plan)
    expected = _logits(model, ids)
    actlab.remove_(model)
    prepared = accelerate.Accelerator(cpu=True).prepare(model)  # one process: the model itself (or DDP)
    actlab.apply_(prepared, plan)
    try:
        torch.testing.assert_close(_logits(prepared, ids), expected, rtol=0, atol=0)
    finally:
        actlab.remove_(prepared)
    assert not masked_modules(prepared)
