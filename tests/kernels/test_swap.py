"""Plans applied as kernel modules: same outputs as the masking path, exact restore, no doubled weights."""

import warnings

import pytest
import torch

import actlab
from actlab.kernels.swap import FusedMember, install_kernels, kernel_modules, remove_kernels
from actlab.sparsity.calibrate import calibrate


def _calib(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 259, (8, 32), generator=g)


@pytest.mark.parametrize(
    "config",
    [actlab.TealConfig(0.5), actlab.WinaConfig(0.5), actlab.CatsConfig(0.4), actlab.ChessConfig(0.5)],
    ids=lambda c: c.method,
)
def test_kernels_match_masking(config):
    model, _ = actlab.load_model("random:tiny-llama")
    plan = calibrate(model, config, _calib())
    ids = torch.randint(3, 259, (1, 12))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        actlab.apply_(model, plan)
        masked = model(input_ids=ids).logits
        actlab.remove_(model)
        left = install_kernels(model, plan)
        assert not left and kernel_modules(model)
        fast = model(input_ids=ids).logits
        # one token at a time exercises the GEMV path (prefill above took the dense-matmul path)
        step = model(input_ids=ids[:, :1]).logits
        remove_kernels(model)
        restored = model(input_ids=ids).logits
    torch.testing.assert_close(fast, masked, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(masked, dense)
    torch.testing.assert_close(step[:, 0], fast[:, 0], rtol=1e-4, atol=1e-4)
    assert torch.equal(restored, dense)
    assert not kernel_modules(model)


def test_qkv_fused_into_one_weight():
    model, _ = actlab.load_model("random:tiny-llama")
    plan = calibrate(model, actlab.TealConfig(0.5), _calib())
    before = sum(p.numel() for p in model.parameters())
    install_kernels(model, plan)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, FusedMember) and attn.k_proj.group is attn.q_proj.group
    # transposed copies replace the originals: the parameter count does not grow
    assert sum(p.numel() for p in model.parameters()) == before
    remove_kernels(model)
    assert isinstance(attn.q_proj, torch.nn.Linear)


def test_topk_stays_on_masking_path_with_warning():
    model, _ = actlab.load_model("random:tiny-llama")
    plan = calibrate(model, actlab.TopKConfig(0.5), None)
    with pytest.warns(UserWarning, match="top-k"):
        left = install_kernels(model, plan)
    assert len(left) == len(plan.entries)


def test_apply_kernels_and_remove_through_public_api():
    model, _ = actlab.load_model("random:tiny-llama")
    plan = calibrate(model, actlab.WinaConfig(0.5), _calib())
    ids = torch.randint(3, 259, (1, 10))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        actlab.apply_(model, plan)
        masked = model(input_ids=ids).logits
        actlab.remove_(model)
        actlab.apply_(model, plan, kernels=True)
        with pytest.raises(actlab.PlanError, match="already has a sparsity plan"):
            actlab.apply_(model, plan)
        fast = model(input_ids=ids).logits
        actlab.remove_(model)
        again = model(input_ids=ids).logits
    torch.testing.assert_close(fast, masked, rtol=1e-4, atol=1e-4)
    assert torch.equal(again, dense)


def test_disabled_kernels_fall_back_with_warning(monkeypatch):
    from actlab.kernels import ops

    model, _ = actlab.load_model("random:tiny-llama")
    plan = calibrate(model, actlab.TealConfig(0.5), _calib())
    ids = torch.randint(3, 259, (1, 1))
    with torch.no_grad():
        actlab.apply_(model, plan)
        masked = model(input_ids=ids).logits
        actlab.remove_(model)
        monkeypatch.setenv("ACTLAB_DISABLE_KERNELS", "1")
        monkeypatch.setattr(ops, "_warned", set())
        actlab.apply_(model, plan, kernels=True)
        with pytest.warns(ops.ActlabKernelWarning, match="disabled"):
            slow = model(input_ids=ids).logits
        actlab.remove_(model)
    torch.testing.assert_close(slow, masked, rtol=1e-5, atol=1e-5)


def _masking_warnings(record):
    return [str(w.message) for w in record if "masking instead" in str(w.message)]


@pytest.mark.parametrize("config", [actlab.CatsConfig(0.4), actlab.ChessConfig(0.5)], ids=lambda c: c.method)
def test_swapped_activation_is_what_the_fused_kernel_runs(config):
    """config.hidden_act still says silu after act_fn became ReLU: the kernel must apply ReLU."""
    from actlab.kernels.linear import SparseGatedMLP
    from actlab.kernels.reference import Activation

    model, _ = actlab.load_model("random:tiny-llama")
    for layer in model.model.layers:
        layer.mlp.act_fn = torch.nn.ReLU()
    assert model.config.hidden_act == "silu"
    plan = calibrate(model, config, _calib())
    ids = torch.randint(3, 259, (1, 12))
    with torch.no_grad():
        actlab.apply_(model, plan)
        masked = model(input_ids=ids).logits
        masked_step = model(input_ids=ids[:, :1]).logits
        actlab.remove_(model)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            left = install_kernels(model, plan)
        mlps = [m for _, m in kernel_modules(model) if isinstance(m, SparseGatedMLP)]
        fast = model(input_ids=ids).logits
        step = model(input_ids=ids[:, :1]).logits  # one token: the C kernel, not the prefill matmul
        remove_kernels(model)
    assert not _masking_warnings(record) and not left
    assert len(mlps) == len(model.model.layers) and {m.act for m in mlps} == {Activation.RELU}
    torch.testing.assert_close(fast, masked, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step, masked_step, rtol=1e-4, atol=1e-4)


class _NotInTable(torch.nn.Module):
    """An activation module whose class the activation table does not know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * 1.5


@pytest.mark.parametrize("act", [torch.nn.GELU(), torch.nn.Tanh(), _NotInTable()],
                         ids=["gelu-no-kernel", "tanh-no-kernel", "not-in-table"])
def test_activation_the_kernel_cannot_run_stays_masked_with_warning(act):
    from actlab.kernels.linear import SparseGatedMLP

    model, _ = actlab.load_model("random:tiny-llama")
    model.model.layers[1].mlp.act_fn = act  # layer 0 keeps its SiLU and gets the fused kernel
    plan = calibrate(model, actlab.CatsConfig(0.4), _calib())
    ids = torch.randint(3, 259, (1, 12))
    with torch.no_grad():
        actlab.apply_(model, plan)
        masked = [model(input_ids=ids).logits, model(input_ids=ids[:, :1]).logits]
        actlab.remove_(model)
        with pytest.warns(UserWarning, match=r"layer 1: model\.layers\.1\.mlp\.act_fn .*masking instead"):
            actlab.apply_(model, plan, kernels=True)
        fast = [model(input_ids=ids).logits, model(input_ids=ids[:, :1]).logits]
        assert isinstance(model.model.layers[0].mlp, SparseGatedMLP)
        assert not isinstance(model.model.layers[1].mlp, SparseGatedMLP)
        actlab.remove_(model)
    for f, m in zip(fast, masked, strict=True):
        torch.testing.assert_close(f, m, rtol=1e-4, atol=1e-4)
