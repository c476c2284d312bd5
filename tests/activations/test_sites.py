"""Site kinds are a registry: existing names unchanged, an opt-in kind resolves only when named, and a new
hook point is one entry."""

import pytest
import torch

import actlab
from actlab.activations import sites as sites_mod
from actlab.activations.sites import KINDS, SiteError, SiteKind, register_site_kind, resolve_sites
from actlab.models.adapters import act_function, get_adapter
from actlab.models.presets import PRESETS

TINY = sorted(p for p in PRESETS if p.startswith("tiny-"))


def test_llama_site_names_and_paths_are_unchanged():
    model, _ = actlab.load_model("random:tiny-llama")
    s = resolve_sites(model, "layers.1.*")
    assert list(s) == [f"layers.1.{k}" for k in
                       ("attn.qkv_in", "attn.o_in", "mlp.gate_up_in", "mlp.act_out", "mlp.down_in", "resid_out")]
    p = "model.layers.1"
    assert s["layers.1.attn.qkv_in"].module_paths == tuple(f"{p}.self_attn.{x}_proj" for x in "qkv")
    assert s["layers.1.mlp.act_out"].module_paths == (f"{p}.mlp.act_fn",) and s["layers.1.mlp.act_out"].feeds == ()
    assert s["layers.1.resid_out"].module_paths == (p,) and s["layers.1.resid_out"].direction == "output"
    gpt2, _ = actlab.load_model("random:tiny-gpt2")
    act = resolve_sites(gpt2, "layers.0.mlp.act_out")["layers.0.mlp.act_out"]
    assert act.feeds == ("transformer.h.0.mlp.c_proj",)  # ungated: the activation feeds down


@pytest.mark.parametrize("preset", TINY)
def test_act_in_is_the_activations_input_on_every_architecture(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    cfg = model.config
    d_ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or cfg.n_inner
    n = len(model.get_submodule(get_adapter(model).layers))
    assert not any(s.endswith("act_in") for s in resolve_sites(model))  # opt-in: not in "all sites"
    assert not any(s.endswith("act_in") for s in resolve_sites(model, "layers.0.*"))
    chosen = resolve_sites(model, "mlp.act_in")
    assert list(chosen) == [f"layers.{i}.mlp.act_in" for i in range(n)]
    ids = torch.randint(3, 200, (2, 5))
    with torch.no_grad(), actlab.capture(model, sites=["mlp.act_in", "mlp.act_out"]) as cap:
        model(input_ids=ids)
    fn = act_function(model, 0)
    for i in range(n):
        pre = cap.tensors[f"layers.{i}.mlp.act_in"]
        assert pre.shape[-1] == d_ff and pre.numel() == 2 * 5 * d_ff  # OPT flattens tokens
        torch.testing.assert_close(fn(pre), cap.tensors[f"layers.{i}.mlp.act_out"])


def test_replacing_act_in_changes_act_out(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 200, (1, 4))
    with torch.no_grad(), actlab.capture(model, sites="layers.0.mlp.act_in", fn=lambda s, x: x.clamp(min=0)):
        with actlab.capture(model, sites="layers.0.mlp.act_out") as cap:
            model(input_ids=ids)
    assert (cap.tensors["layers.0.mlp.act_out"] >= 0).all()


def test_a_new_hook_point_is_one_entry(tiny_llama, monkeypatch):
    model, _ = tiny_llama
    monkeypatch.setattr(sites_mod, "KINDS", dict(KINDS))  # leave the real registry as it was
    register_site_kind(SiteKind("mlp.down_out", "output", lambda ad: (ad.down,)), after="mlp.down_in")
    names = list(resolve_sites(model, "layers.0.*"))
    assert names.index("layers.0.mlp.down_out") == names.index("layers.0.mlp.down_in") + 1
    ids = torch.randint(3, 200, (1, 4))
    with torch.no_grad(), actlab.capture(model, sites="layers.0.mlp.*") as cap:
        model(input_ids=ids)
    down = model.model.layers[0].mlp.down_proj
    torch.testing.assert_close(cap.tensors["layers.0.mlp.down_out"], down(cap.tensors["layers.0.mlp.down_in"]))


def test_registry_refuses_bad_entries():
    with pytest.raises(ValueError, match="mlp.down_in"):
        register_site_kind(SiteKind("mlp.down_in", "input", lambda ad: (ad.down,)))
    with pytest.raises(ValueError, match="sideways"):
        register_site_kind(SiteKind("x", "sideways", lambda ad: ()))
    with pytest.raises(ValueError, match="after 'nope'"):
        register_site_kind(SiteKind("y", "input", lambda ad: ()), after="nope")
    assert "x" not in KINDS and "y" not in KINDS


def test_opt_in_kind_missing_from_a_pattern_is_clear(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(SiteError, match="no site matches"):
        resolve_sites(model, "mlp.act_i*")  # opt-in kinds are selected by their full name only
