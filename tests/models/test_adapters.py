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


@pytest.mark.parametrize("preset", TINY)
def test_final_norm_embedding_and_lm_head_play_their_roles(preset):
    from actlab.models.adapters import role_path

    model, _ = actlab.load_model(f"random:{preset}")
    ad = get_adapter(model)
    cfg = model.config
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    paths = {role: role_path(model, ad, role) for role in ("final_norm", "embed", "lm_head")}
    assert paths["embed"] and paths["lm_head"], paths
    embed, head = model.get_submodule(paths["embed"]), model.get_submodule(paths["lm_head"])
    assert isinstance(embed, torch.nn.Embedding) and embed.weight.shape == (cfg.vocab_size, d)
    assert linear_weight(head).shape == (cfg.vocab_size, d)
    seen = {}

    def keep(name):
        def hook(module, args, out):
            seen[name] = (args[0].detach(), out.detach())
        return hook

    handles = [embed.register_forward_hook(keep("embed")), head.register_forward_hook(keep("lm_head"))]
    if ad.final_norm:
        norm = model.get_submodule(paths["final_norm"])
        assert norm.weight.shape == (d,)
        handles.append(norm.register_forward_hook(keep("final_norm")))
    else:
        assert preset == "tiny-bert" and paths["final_norm"] is None  # post-norm: no final norm
    ids = torch.randint(3, 200, (2, 5))
    last = f"layers.{len(model.get_submodule(ad.layers)) - 1}.resid_out"
    try:
        with torch.no_grad(), actlab.capture(model, sites=last) as cap:
            logits = model(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(seen["embed"][0], ids)
    head_out = seen["lm_head"][1]
    cap_value = getattr(cfg, "final_logit_softcapping", None)
    if cap_value:
        head_out = torch.tanh(head_out / cap_value) * cap_value
    torch.testing.assert_close(head_out, logits)
    if ad.final_norm:  # the norm reads the last layer's output and is what the head reads
        torch.testing.assert_close(seen["final_norm"][0], cap.tensors[last])
        torch.testing.assert_close(seen["final_norm"][1], seen["lm_head"][0])


def test_role_paths_fall_back_through_alternatives():
    from actlab.models.adapters import role_path

    model, _ = actlab.load_model("random:tiny-gpt_neox")
    ad = Adapter.from_dict({**ADAPTERS["gpt_neox"].__dict__, "lm_head": ["embed_out", "lm_head"]})
    assert role_path(model, ad, "lm_head") == "lm_head"  # embed_out before transformers 5
    assert role_path(model, Adapter.from_dict({**ad.__dict__, "lm_head": "nope"}), "lm_head") is None
    with pytest.raises(ValueError, match="unknown module role"):
        role_path(model, ad, "head")
