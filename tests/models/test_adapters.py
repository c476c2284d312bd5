import pytest
import torch

import actlab
from actlab.activations.sites import SITE_KINDS, resolve_sites
from actlab.models.adapters import ADAPTERS, Adapter, UnknownArchitectureError, get_adapter, linear_weight
from actlab.models.presets import PRESETS

TINY = sorted(p for p in PRESETS if p.startswith("tiny-"))
REQUIRED = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "gpt2", "gpt_neox", "opt", "bert"}


def test_table_covers_required_architectures():
    assert REQUIRED <= set(ADAPTERS)
    assert {p.removeprefix("tiny-") for p in TINY} >= REQUIRED


@pytest.mark.parametrize("preset", TINY)
def test_all_sites_found_with_right_shapes(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    cfg = model.config
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    d_ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or cfg.n_inner
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    sites = resolve_sites(model)
    assert len(sites) == 6 * n_layers
    ids = torch.randint(3, 200, (2, 5))
    with actlab.capture(model) as cap:
        model(input_ids=ids)
    assert set(cap.tensors) == set(sites)
    want = {"attn.qkv_in": d, "attn.o_in": d, "mlp.gate_up_in": d, "mlp.in": d,
            "mlp.act_out": d_ff, "mlp.down_in": d_ff, "resid_out": d}
    for name, x in cap.tensors.items():
        kind = sites[name].kind
        assert kind in SITE_KINDS
        assert x.shape[-1] == want[kind], (name, tuple(x.shape))
        assert x.numel() == 2 * 5 * want[kind], name  # every token seen once
    # each consumer's weight reads the site's width
    for site in sites.values():
        for path in site.feeds:
            assert linear_weight(model.get_submodule(path)).shape[1] == want[site.kind]


def test_gated_vs_ungated_site_names():
    llama, _ = actlab.load_model("random:tiny-llama")
    gpt2, _ = actlab.load_model("random:tiny-gpt2")
    assert "layers.0.mlp.gate_up_in" in resolve_sites(llama)
    assert "layers.0.mlp.in" in resolve_sites(gpt2)
    # llama: down_in = act(gate) * up, so it differs from act_out
    ids = torch.randint(3, 200, (1, 4))
    with actlab.capture(llama, sites="layers.0.mlp.*") as cap:
        llama(input_ids=ids)
    assert not torch.allclose(cap.tensors["layers.0.mlp.act_out"], cap.tensors["layers.0.mlp.down_in"])


def test_unknown_architecture_lists_supported():
    with pytest.raises(UnknownArchitectureError, match="supported are .*llama.*add an entry"):
        get_adapter("mamba")


def test_user_mapping_overrides_table():
    model, _ = actlab.load_model("random:tiny-llama")
    mapping = {**ADAPTERS["llama"].__dict__, "qkv": ["self_attn.q_proj"]}
    ad = get_adapter(model, mapping)
    assert isinstance(ad, Adapter)
    sites = resolve_sites(model, adapter=mapping)
    assert sites["layers.0.attn.qkv_in"].feeds == ("model.layers.0.self_attn.q_proj",)


def test_bad_user_mapping_names_missing_module():
    model, _ = actlab.load_model("random:tiny-llama")
    mapping = {**ADAPTERS["llama"].__dict__, "down": "mlp.nope"}
    with pytest.raises(ValueError, match="mlp.nope"):
        resolve_sites(model, adapter=mapping)
