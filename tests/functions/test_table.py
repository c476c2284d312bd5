"""The activation-function table: names, functions, module classes and kernel ids agree with each other,
with transformers' own activation table, and with the C kernels' enum."""

import importlib
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import actlab
from actlab.errors import user_error_types
from actlab.functions import (
    FUNCTIONS,
    ActivationFunction,
    UnknownActivationError,
    get_function,
    kernel_functions,
    lookup,
    lookup_module,
    register_function,
)
from actlab.kernels.reference import ACT_FUNCTIONS, Activation
from actlab.models.adapters import act_function, act_name, get_adapter
from actlab.models.presets import PRESETS

ENTRIES = list(FUNCTIONS.values())
X = torch.linspace(-6, 6, 241)


def _instantiate(match):
    module_path, _, cls_name = match.cls.rpartition(".")
    cls = getattr(importlib.import_module(module_path), cls_name)
    return cls(**dict(match.attrs))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_module_class_computes_the_entrys_function(entry):
    assert entry.modules, "an entry names the modules that implement it"
    for match in entry.modules:
        module = _instantiate(match)
        assert lookup_module(module) is entry
        # the tanh approximations of GELU differ from each other by rounding only
        torch.testing.assert_close(module(X), entry.fn(X), rtol=1e-5, atol=1e-6)


def test_table_agrees_with_transformers_names():
    act2fn = pytest.importorskip("transformers.activations").ACT2FN
    known = [(n, e) for e in ENTRIES for n in e.names if n in act2fn]
    assert {"silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "relu2",
            "quick_gelu"} <= {n for n, _ in known}
    for name, entry in known:
        module = act2fn[name]
        assert lookup_module(module) is entry, (name, type(module))
        torch.testing.assert_close(module(X), entry.fn(X), rtol=1e-5, atol=1e-6)


def test_kernel_ids_match_the_c_enum_and_the_reference():
    header = Path(actlab.__file__).parent / "kernels" / "csrc" / "sparse_gemv.h"
    c_enum = {m[0].lower(): int(m[1]) for m in re.findall(r"ACTLAB_ACT_(\w+)\s*=\s*(\d+)", header.read_text())}
    assert c_enum == {e.name: k for k, e in kernel_functions().items()}
    assert {a.name.lower(): int(a) for a in Activation} == c_enum
    for act, fn in ACT_FUNCTIONS.items():
        assert fn is kernel_functions()[int(act)].fn
    assert Activation.parse("swish") is Activation.SILU
    assert Activation.parse(get_function("gelu_fast")) is Activation.GELU_TANH
    with pytest.raises(ValueError, match="do not support activation 'relu2'.*silu"):
        Activation.parse("relu2")


def test_lookup_by_name_module_and_function():
    assert get_function("GELU_PYTORCH_TANH") is get_function("gelu_new") is FUNCTIONS["gelu_tanh"]
    assert lookup(torch.nn.functional.silu) is FUNCTIONS["silu"]
    assert lookup(nn.SiLU()) is FUNCTIONS["silu"]
    assert lookup_module(nn.GELU(approximate="none")) is FUNCTIONS["gelu"]
    assert lookup_module(nn.GELU(approximate="tanh")) is FUNCTIONS["gelu_tanh"]


def test_subclass_is_not_taken_for_its_parent():
    class Shifted(nn.ReLU):  # same class name chain, different function
        def forward(self, x):
            return super().forward(x - 1)

    assert lookup_module(Shifted()) is None
    with pytest.raises(UnknownActivationError, match="not in actlab's activation table"):
        lookup(Shifted())


def test_unknown_name_is_a_user_error():
    with pytest.raises(UnknownActivationError, match="unknown activation 'nope'; known: .*silu"):
        get_function("nope")
    assert issubclass(UnknownActivationError, user_error_types())


def test_register_refuses_taken_names_and_ids():
    with pytest.raises(ValueError, match="swish"):
        register_function(ActivationFunction("swish", torch.sigmoid))
    with pytest.raises(ValueError, match="kernel id 0"):
        register_function(ActivationFunction("my_sigmoid", torch.sigmoid, kernel_id=0))
    assert "my_sigmoid" not in FUNCTIONS


@pytest.mark.parametrize("preset", sorted(p for p in PRESETS if p.startswith("tiny-")))
def test_every_architecture_runs_an_activation_the_table_knows(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    ad = get_adapter(model)
    fn = act_function(model, 0, ad)
    assert fn is not None and fn.name == act_name(model.config, ad)


def test_act_name_canonical_from_config():
    ad = get_adapter("llama")
    assert act_name(type("C", (), {"hidden_act": "swish"})(), ad) == "silu"
    assert act_name(type("C", (), {"hidden_act": "my_act"})(), ad) == "my_act"
    assert act_name(object(), ad) == "unknown"


class _Cube(nn.Module):
    def forward(self, x):
        return x**3


def test_act_function_reads_the_module_not_the_config():
    model, _ = actlab.load_model("random:tiny-llama")
    model.model.layers[1].mlp.act_fn = nn.ReLU()
    assert act_function(model, 0).name == "silu"
    assert act_function(model, 1).name == "relu"
    model.model.layers[1].mlp.act_fn = _Cube()  # a user's own activation: not in the table
    assert act_function(model, 1) is None
