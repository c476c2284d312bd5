"""Swaps by name: any table function on the gate, the up projection or both computes its formula on every
gated architecture, saves and loads back (learnable coefficients included), runs the original again inside
activation_as, and follows LoRA's wrap and merge."""

import logging

import pytest
import torch

import actlab
from actlab.errors import user_error_types
from actlab.functions import ActivationParameterError, UnknownActivationError, get_function
from actlab.functions.swap_by_name import UP_NAME, UpActivation, apply_record, swap_activation_
from actlab.functions.swaps import SwapError, activation_as, activation_state, swap_activation, swap_record
from actlab.models.adapters import act_function, get_adapter
from actlab.models.presets import PRESETS, make_config

GATED = sorted(p for p in PRESETS if p.startswith("tiny-") and get_adapter(make_config(p).model_type).gated)
CASES = [("relu2", "gate", {}), ("snake", "both", {"alpha": 0.5}), ("gelu", "up", {}),
         ("pau", "gate", {"init": "gelu"}), ("drelu", None, {}), ("leaky_relu", "both", {"negative_slope": 0.2})]


def _mlp(model, layer):
    ad = get_adapter(model)
    return model.get_submodule(f"{ad.layers}.{layer}.{ad.down}".rpartition(".")[0])


def _reference(model, layer, original_act, name, where, params, x):
    """down(g(gate) * u(up)) from the projections and the table alone, by the adapter's paths."""
    ad = get_adapter(model)
    prefix = f"{ad.layers}.{layer}"
    projs = [model.get_submodule(f"{prefix}.{p}") for p in ad.mlp_in]
    with torch.no_grad():  # from the weights: the projections' modules now carry the swap's hook
        outs = [torch.nn.functional.linear(x, p.weight, p.bias) for p in projs]
        gate, up = outs[0].chunk(2, dim=-1) if ad.fused_gate_up else outs
        f = get_function(name)
        g = f.apply(gate, **params) if where in ("gate", "both") else original_act(gate)
        u = f.apply(up, **params) if where in ("up", "both") else up
        return model.get_submodule(f"{prefix}.{ad.down}")(g * u)


@pytest.mark.parametrize("preset", GATED)
@pytest.mark.parametrize(("name", "where", "params"), CASES, ids=[c[0] for c in CASES])
def test_swap_by_name_computes_the_reference(preset, name, where, params):
    model, _ = actlab.load_model(f"random:{preset}")
    x = torch.randn(2, 5, model.config.hidden_size)
    mlp = _mlp(model, 1)
    original = act_function(model, 1).fn
    with torch.no_grad():
        dense = mlp(x)
    info = swap_activation_(model, name, where=where, **params)
    want_where = where or "both"
    assert info["where"] == want_where and info["layers"] == model.config.num_hidden_layers
    with torch.no_grad():
        got = mlp(x)
    want = _reference(model, 1, original, name, want_where, params, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, dense)
    if want_where != "up":
        assert act_function(model, 0) is get_function(name)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-phi3"])
@pytest.mark.parametrize(("name", "where", "params"), [
    ("pau", "both", {"init": "gelu"}), ("sau", "up", {}), ("xielu", "gate", {}), ("prelu", "gate", {"init": 0.1}),
    ("snake", "up", {"alpha": 2.0}), ("relu2", "gate", {}), ("fatrelu", "both", {"threshold": 0.05}),
], ids=["pau", "sau", "xielu", "prelu", "snake", "relu2", "fatrelu"])
def test_saved_swap_loads_back_with_identical_logits(tmp_path, preset, name, where, params):
    model, tok = actlab.load_model(f"random:{preset}")
    swap_activation_(model, name, where=where, **params)
    with torch.no_grad():  # as if trained: coefficients away from their init, different per layer
        for i, (n, p) in enumerate(model.named_parameters()):
            if "act" in n:
                p.add_(0.01 * (i + 1))
    ids = torch.randint(3, 500, (2, 10))
    with torch.no_grad():
        before = model(ids).logits
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = actlab.load_model(str(tmp_path))
    with torch.no_grad():
        after = again(ids).logits
    assert torch.equal(before, after)
    assert swap_record(again) == swap_record(model)
    learned = {n: p for n, p in model.named_parameters() if "act" in n}
    assert set(learned) == {n for n, _ in again.named_parameters() if "act" in n}
    for n, p in learned.items():
        assert torch.equal(p, again.get_parameter(n)), n
    if get_function(name).properties.get("learnable"):
        assert learned


def test_learnable_coefficients_are_trained_by_the_lm_loss():
    model, _ = actlab.load_model("random:tiny-llama")
    swap_activation_(model, "pau", where="both")
    coeffs = [p for n, p in model.named_parameters() if "act" in n]
    assert len(coeffs) == 4 * model.config.num_hidden_layers  # numerator, denominator; gate and up
    for p in model.parameters():
        p.requires_grad_(True)
    ids = torch.randint(3, 500, (2, 12))
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in coeffs)


def test_hidden_act_is_the_transformers_name_where_one_computes_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    cases = {("gelu", "gate", ()): "gelu", ("tanh", "gate", ()): "tanh", ("relu2", "gate", ()): "relu2",
             ("leaky_relu", "gate", (("negative_slope", 0.2),)): "silu", ("snake", "gate", ()): "silu",
             ("gelu", "up", ()): "silu", ("pau", "gate", ()): "silu"}
    for (name, where, params), hidden in cases.items():
        model, _ = actlab.load_model("random:tiny-llama")
        assert swap_activation_(model, name, where=where, **dict(params))["hidden_act"] == hidden, name
    model, _ = actlab.load_model("random:tiny-llama")
    swap_activation_(model, "tanh")
    ids = torch.randint(3, 500, (1, 8))
    model.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)  # no actlab involved
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits)


def test_activation_as_runs_the_original_and_comes_back():
    model, _ = actlab.load_model("random:tiny-llama")
    ids = torch.randint(3, 500, (1, 8))
    with torch.no_grad():
        original = model(ids).logits
        before = activation_state(model)
        swap_activation_(model, "sau", where="both")
        swapped = model(ids).logits
        with activation_as(model, before):
            assert torch.equal(model(ids).logits, original)
            assert not hasattr(model.model.layers[0].mlp, UP_NAME)
        assert torch.equal(model(ids).logits, swapped)
    assert swap_record(model)["function"] == "sau"
    assert not any(isinstance(h, UpActivation) for h in model.model.layers[0].mlp.down_proj._forward_hooks.values())


def test_a_swap_by_name_replaces_a_relu_swap_and_back():
    model, _ = actlab.load_model("random:tiny-llama")
    swap_activation(model, "drelu", relu_after_norms=True)
    swap_activation_(model, "gelu")
    down = model.model.layers[0].mlp.down_proj
    assert not down._forward_pre_hooks  # dReLU's input ReLU went with its record
    assert swap_record(model) == {"function": "gelu", "params": {}, "where": "gate"}
    swap_activation(model, "relu")
    assert not hasattr(model.model.layers[0].mlp, UP_NAME)


def test_lora_wrap_and_merge_move_the_up_hook():
    pytest.importorskip("peft")
    from actlab.train.config import DenseConfig
    from actlab.train.lora import merge, wrap

    model, _ = actlab.load_model("random:tiny-llama")
    swap_activation_(model, "snake", where="up")
    wrapped = wrap(model, DenseConfig(lora_r=2))
    up = model.model.layers[0].mlp.up_proj
    assert any(isinstance(h, UpActivation) for h in up._forward_hooks.values())
    assert not up.base_layer._forward_hooks
    torch.nn.init.normal_(up.lora_B["default"].weight)
    ids = torch.randint(3, 500, (1, 8))
    with torch.no_grad():
        trained = wrapped(input_ids=ids).logits
    merged = merge(wrapped)
    lin = merged.model.layers[0].mlp.up_proj
    assert type(lin) is torch.nn.Linear and any(isinstance(h, UpActivation) for h in lin._forward_hooks.values())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained, rtol=1e-4, atol=1e-5)


def test_bad_swaps_are_user_errors_and_touch_nothing(tmp_path):
    model, _ = actlab.load_model("random:tiny-llama")
    with pytest.raises(UnknownActivationError, match="unknown activation 'nope'"):
        swap_activation_(model, "nope")
    with pytest.raises(SwapError, match="where must be one of gate, up, both"):
        swap_activation_(model, "relu", where="down")
    with pytest.raises(ActivationParameterError, match="snake has no parameter beta"):
        swap_activation_(model, "snake", beta=1.0)
    assert act_function(model, 0).name == "silu" and swap_record(model) is None
    gpt2, _ = actlab.load_model("random:tiny-gpt2")
    with pytest.raises(SwapError, match="needs a gated MLP"):
        swap_activation_(gpt2, "relu", where="both")
    swap_activation_(gpt2, "mish")
    assert act_function(gpt2, 0).name == "mish"
    swap_activation_(model, "relu2")
    with pytest.raises(SwapError, match="already carries a swap"):
        swap_activation_(model, "relu", where="up")
    swap_activation_(model, "pau")
    with pytest.raises(SwapError, match="does not hold"):
        apply_record(model, swap_record(model), checkpoint=tmp_path)
    with pytest.raises(SwapError, match="not an activation swap"):
        apply_record(model, {"function": "relu", "extra": 1})
    assert issubclass(SwapError, user_error_types())


def test_a_copy_of_a_swapped_model_runs_its_own_up_modules():
    import copy

    model, _ = actlab.load_model("random:tiny-llama")
    swap_activation_(model, "sau", where="up")
    twin = copy.deepcopy(model)
    hook = next(h for h in twin.model.layers[0].mlp.up_proj._forward_hooks.values() if isinstance(h, UpActivation))
    assert hook.owner is twin.model.layers[0].mlp
    ids = torch.randint(3, 500, (1, 6))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, twin(ids).logits)
        twin.model.layers[0].mlp.actlab_up_act.alpha.add_(0.5)
        assert not torch.equal(model(ids).logits, twin(ids).logits)


def _report(*rows: tuple[str, str]) -> logging.LogRecord:
    body = "\n".join(["Key | Status | |", "----+--------+-+-"] + [f"{k} | {s} | |" for k, s in rows])
    return logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 0,
                             "LlamaForCausalLM LOAD REPORT from: d\n" + body + "\n\nNotes:\n- UNEXPECTED: ...", None, None)


def test_the_load_report_is_left_out_only_for_the_swapped_activations_own_keys():
    from actlab.functions.swap_by_name import _SwapKeysReport

    f = _SwapKeysReport()
    assert not f.filter(_report(("model.layers.{0, 1}.mlp.act_fn.numerator", "UNEXPECTED"),
                                ("model.layers.{0, 1}.mlp.actlab_up_act.denominator", "UNEXPECTED")))
    assert f.filter(_report(("model.layers.{0, 1}.mlp.act_fn.numerator", "UNEXPECTED"),
                            ("model.layers.0.self_attn.q_proj.weight", "MISSING")))
    assert f.filter(_report(("model.layers.0.mlp.act_fn.numerator", "MISSING")))
    assert f.filter(logging.LogRecord("t", logging.WARNING, __file__, 0, "something else", None, None))


def test_a_saved_learnable_swap_loads_without_an_unexpected_keys_report(tmp_path):
    import transformers

    model, tok = actlab.load_model("random:tiny-llama")
    swap_activation_(model, "pau", where="both", init="gelu")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    emitter = logging.getLogger("transformers.modeling_utils")  # where the report is logged, after its filters
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    emitter.addHandler(handler)
    try:
        back, _ = actlab.load_model(str(tmp_path / "m"))
        transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))  # without actlab: reported
    finally:
        emitter.removeHandler(handler)
        transformers.logging.set_verbosity(level)
    assert len([m for m in seen if "LOAD REPORT" in m]) == 1  # the plain transformers load only
    ids = torch.randint(3, 259, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model.eval()(ids).logits)
