"""Activation swaps: each kind computes its formula on every gated architecture, survives save/load, LoRA
wrap and merge, and the original activation can be run again on the same weights."""

import pytest
import torch
import torch.nn.functional as F

import actlab
from actlab.errors import user_error_types
from actlab.functions import FATReLU, get_function, lookup_module
from actlab.functions.swaps import (
    CONFIG_KEY,
    SwapError,
    activation_as,
    activation_state,
    refresh_swap,
    swap_activation,
    swap_record,
)
from actlab.models.adapters import act_function, get_adapter
from actlab.models.presets import PRESETS, make_config

#: every tiny preset whose architecture's MLP is gated (the adapter table says which)
GATED = sorted(p for p in PRESETS if p.startswith("tiny-") and get_adapter(make_config(p).model_type).gated)
KINDS = [("relu", 0.0), ("fatrelu", 0.05), ("relu2", 0.0), ("drelu", 0.0)]


def _ref_act(kind, theta, x):
    return {"relu": F.relu(x), "fatrelu": torch.where(x >= theta, x, torch.zeros_like(x)),
            "relu2": F.relu(x) ** 2, "drelu": F.relu(x)}[kind]


def _reference_mlp(model, layer, kind, theta, x):
    """down(act(gate) * up) from the projections alone, with dReLU's relu(up), by the adapter's paths."""
    ad = get_adapter(model)
    prefix = f"{ad.layers}.{layer}"
    projs = [model.get_submodule(f"{prefix}.{p}") for p in ad.mlp_in]
    gate, up = projs[0](x).chunk(2, dim=-1) if ad.fused_gate_up else (projs[0](x), projs[1](x))
    if kind == "drelu":
        up = F.relu(up)
    return model.get_submodule(f"{prefix}.{ad.down}")(_ref_act(kind, theta, gate) * up)


@pytest.mark.parametrize("preset", GATED)
@pytest.mark.parametrize(("kind", "theta"), KINDS)
def test_swap_computes_the_reference_formula(preset, kind, theta):
    model, _ = actlab.load_model(f"random:{preset}")
    ad = get_adapter(model)
    mlp = model.get_submodule(f"{ad.layers}.1.{ad.down}".rpartition(".")[0])
    x = torch.randn(2, 5, model.config.hidden_size)
    dense = mlp(x)
    info = swap_activation(model, kind, theta=theta)
    assert info["layers"] == model.config.num_hidden_layers and info["activation"] == kind
    with torch.no_grad():
        got, want = mlp(x), _reference_mlp(model, 1, kind, theta, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, dense)  # the swap changed what the MLP computes
    assert act_function(model, 0).name == {"drelu": "relu"}.get(kind, kind)


def test_drelu_zeros_the_down_input_where_gate_or_up_is_negative():
    model, _ = actlab.load_model("random:tiny-llama")
    swap_activation(model, "drelu")
    ids = torch.randint(3, 500, (1, 12))
    with actlab.capture(model, sites=["mlp.act_in", "mlp.down_in"]) as cap, torch.no_grad():
        model(ids)
    mlp = model.model.layers[0].mlp
    down_in = cap.tensors["layers.0.mlp.down_in"]
    gate = cap.tensors["layers.0.mlp.act_in"]
    assert (down_in >= 0).all()
    assert (down_in[gate <= 0] == 0).all()
    # where the gate is positive, the zeros are exactly the negative up values
    with torch.no_grad():
        x = torch.randn(1, 12, 64)
        up = mlp.up_proj(x)
        g = F.relu(mlp.gate_proj(x))
    torch.testing.assert_close(mlp(x), mlp.down_proj(g * F.relu(up)))


def test_relu_after_norms_feeds_relu_of_the_norm_outputs():
    model, _ = actlab.load_model("random:tiny-llama")
    swap_activation(model, "relu", relu_after_norms=True)
    layer = model.model.layers[0]
    seen = {}
    hooks = [layer.input_layernorm.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o)),
             layer.post_attention_layernorm.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o))]
    try:
        with actlab.capture(model, sites=["layers.0.attn.qkv_in", "layers.0.mlp.gate_up_in"]) as cap:
            model(torch.randint(3, 500, (1, 9)))
    finally:
        for h in hooks:
            h.remove()
    assert (seen["attn"] < 0).any()  # the norm itself still outputs negatives...
    torch.testing.assert_close(cap.tensors["layers.0.attn.qkv_in"], F.relu(seen["attn"]))  # ...q/k/v read relu
    torch.testing.assert_close(cap.tensors["layers.0.mlp.gate_up_in"], F.relu(seen["mlp"]))


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-phi3", "tiny-gemma2"])
@pytest.mark.parametrize(("kind", "theta", "norms"), [(*k, False) for k in KINDS] + [("drelu", 0.0, True)])
def test_saved_swap_loads_back_with_identical_logits(tmp_path, preset, kind, theta, norms):
    model, tok = actlab.load_model(f"random:{preset}")
    swap_activation(model, kind, theta=theta, relu_after_norms=norms)
    ids = torch.randint(3, 500, (2, 10))
    with torch.no_grad():
        before = model(ids).logits
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = actlab.load_model(str(tmp_path))
    with torch.no_grad():
        after = again(ids).logits
    assert torch.equal(before, after)
    assert swap_record(again) == {"activation": kind, "theta": theta, "relu_after_norms": norms}
    if kind == "fatrelu":
        assert isinstance(again.model.layers[0].mlp.act_fn if preset != "tiny-phi3"
                          else again.model.layers[0].mlp.activation_fn, FATReLU)


def test_relu_and_relu2_save_a_hidden_act_transformers_knows(tmp_path):
    transformers = pytest.importorskip("transformers")
    for kind in ("relu", "relu2"):
        model, _ = actlab.load_model("random:tiny-llama")
        swap_activation(model, kind)
        model.save_pretrained(tmp_path / kind)
        plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / kind)  # no actlab involved
        assert lookup_module(plain.model.layers[0].mlp.act_fn) is get_function(kind)
    model, _ = actlab.load_model("random:tiny-gemma2")  # gemma2 names it hidden_activation
    swap_activation(model, "relu2")
    assert model.config.hidden_activation == "relu2"


def test_lora_wrap_and_merge_move_the_input_relus():
    pytest.importorskip("peft")
    from actlab.functions.swaps import _relu_input
    from actlab.train.config import DenseConfig
    from actlab.train.lora import merge, wrap

    model, _ = actlab.load_model("random:tiny-llama")
    swap_activation(model, "drelu", relu_after_norms=True)
    wrapped = wrap(model, DenseConfig(lora_r=2))
    down = model.model.layers[0].mlp.down_proj
    assert _relu_input in down._forward_pre_hooks.values()
    assert _relu_input not in down.base_layer._forward_pre_hooks.values()
    torch.nn.init.normal_(down.lora_B["default"].weight)
    x = -torch.rand(1, 3, 128)  # both branches read relu(x) = 0
    torch.testing.assert_close(down(x), down(torch.zeros_like(x)))
    ids = torch.randint(3, 500, (1, 8))
    with torch.no_grad():
        trained = wrapped(input_ids=ids).logits
    merged = merge(wrapped)
    lin = merged.model.layers[0].mlp.down_proj
    assert type(lin) is torch.nn.Linear and _relu_input in lin._forward_pre_hooks.values()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained, rtol=1e-4, atol=1e-5)
    refresh_swap(merged)  # idempotent: still one hook per module
    assert list(lin._forward_pre_hooks.values()).count(_relu_input) == 1


def test_hooked_linears_stay_off_the_kernels():
    from actlab.kernels.swap import _is_plain_linear

    model, _ = actlab.load_model("random:tiny-llama")
    assert _is_plain_linear(model.model.layers[0].mlp.down_proj)
    swap_activation(model, "drelu")
    assert not _is_plain_linear(model.model.layers[0].mlp.down_proj)
    assert _is_plain_linear(model.model.layers[0].mlp.up_proj)


def test_activation_as_runs_the_original_on_the_same_weights():
    model, _ = actlab.load_model("random:tiny-llama")
    ids = torch.randint(3, 500, (1, 8))
    with torch.no_grad():
        original = model(ids).logits
        before = activation_state(model)
        swap_activation(model, "drelu", relu_after_norms=True)
        swapped = model(ids).logits
        with activation_as(model, before):
            assert torch.equal(model(ids).logits, original)
            assert not hasattr(model.config, CONFIG_KEY) and model.config.hidden_act == "silu"
        assert torch.equal(model(ids).logits, swapped)
    assert swap_record(model)["activation"] == "drelu"


def test_ungated_models_take_the_elementwise_kinds_only():
    model, _ = actlab.load_model("random:tiny-gpt2")
    swap_activation(model, "relu", relu_after_norms=True)
    assert act_function(model, 0).name == "relu"
    model(torch.randint(3, 500, (1, 6)))
    with pytest.raises(SwapError, match="drelu needs a gated MLP"):
        swap_activation(model, "drelu")


def test_bad_swaps_are_user_errors_naming_the_fix():
    model, _ = actlab.load_model("random:tiny-llama")
    with pytest.raises(SwapError, match="unknown activation swap 'gelu'; choose one of relu, fatrelu, relu2, drelu"):
        swap_activation(model, "gelu")
    with pytest.raises(SwapError, match="theta must be a finite number >= 0"):
        swap_activation(model, "fatrelu", theta=-0.1)
    with pytest.raises(SwapError, match="use activation 'fatrelu'"):
        swap_activation(model, "relu", theta=0.1)
    assert issubclass(SwapError, user_error_types())
    assert act_function(model, 0).name == "silu"  # nothing was swapped by a refused call


def test_fatrelu_in_the_table():
    f = FATReLU(0.5)
    assert f(torch.tensor([-1.0, 0.2, 0.5, 2.0])).tolist() == [0.0, 0.0, 0.5, 2.0]
    assert lookup_module(f) is get_function("fatrelu")
    x = torch.linspace(-3, 3, 61)
    assert torch.equal(FATReLU()(x), F.relu(x))


def test_a_plan_on_a_drelu_model_computes_the_same_with_kernels():
    pytest.importorskip("actlab.kernels.ops")
    model, _ = actlab.load_model("random:tiny-llama")
    swap_activation(model, "drelu", relu_after_norms=True)
    plan = actlab.sparsify_(model, actlab.TealConfig(0.5), torch.randint(3, 500, (4, 32)))
    ids = torch.randint(3, 500, (1, 16))
    with torch.no_grad():
        masked = model(ids).logits
    actlab.remove_(model)
    with pytest.warns(UserWarning, match="without hooks only"):
        actlab.apply_(model, plan, kernels=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, masked)
    actlab.remove_(model)
