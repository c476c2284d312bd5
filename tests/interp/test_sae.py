"""The SAE model: TopK / BatchTopK sparsity, SAELens's layout on disk, and the `actlab sae` command."""

from __future__ import annotations

import json

import pytest
import torch

from actlab.interp.sae import SAEConfig, SAEError, SparseAutoencoder, saelens_hook_name, site_from_hook_name

# What SAELens reads, found in jbloomAus/SAELens 91ca16c (v6.18.0): SAEConfig's fields in sae_lens/saes/sae.py
# (d_in, d_sae, dtype, device, apply_b_dec_to_input, normalize_activations, reshape_activations) + "architecture";
# TopKSAEConfig's k, rescale_acts_by_decoder_norm (saes/topk_sae.py); the metadata keys handle_pre_6_0_config
# lifts from the top level (LLM_METADATA_KEYS in loading/pretrained_sae_loaders.py); and the fields SAELens
# 5.x's SAEConfig requires (v5.11.0 sae_lens/sae.py). Hard-coded here so that a change to the writer fails.
EXPECTED_CFG_KEYS = {
    "architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
    "reshape_activations", "activation_fn", "activation_fn_str", "activation_fn_kwargs",
    "finetuning_scaling_factor", "model_name", "hook_name", "hook_layer", "hook_head_index", "context_size",
    "prepend_bos", "dataset_path", "dataset_trust_remote_code", "seqpos_slice", "model_from_pretrained_kwargs",
    "sae_lens_training_version", "neuronpedia_id",
}
EXPECTED_TOPK_KEYS = {"k", "rescale_acts_by_decoder_norm"}


def _sae(kind: str = "topk", d_in: int = 16, d_sae: int = 64, k: int = 4, seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, k=k, kind=kind, site="layers.1.resid_out",
                                      model_name="random:tiny-llama"), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
    return sae


def test_topk_keeps_exactly_k_per_token():
    sae = _sae(k=5)
    x = torch.randn(200, 16)
    pre = sae.pre_acts(x)
    z = sae.encode(x)
    assert bool(((z > 0).sum(-1) <= 5).all())
    # where the k-th largest pre-activation is positive, exactly k latents are active, and they are the top k
    pos = pre.topk(5, dim=-1).values[:, -1] > 0
    assert pos.sum() > 20
    assert bool(((z[pos] > 0).sum(-1) == 5).all())
    kept = (z > 0)
    top_idx = pre.topk(5, dim=-1).indices
    manual = torch.zeros_like(kept).scatter(-1, top_idx, True) & (pre > 0)
    assert torch.equal(kept, manual)
    assert torch.equal(z[kept], pre[kept])
    with torch.no_grad():  # all pre-activations positive: exactly k everywhere
        sae.b_enc.fill_(100.0)
    assert bool((sae.encode(x).count_nonzero(-1) == 5).all())


def test_batchtopk_keeps_k_times_batch_per_batch():
    sae = _sae("batchtopk", k=3)
    with torch.no_grad():
        sae.b_enc.fill_(50.0)  # every pre-activation positive: ReLU removes none
    sae.train()
    x = torch.randn(40, 16) * torch.linspace(0.1, 3, 40)[:, None]  # rows differ in scale: counts per row differ
    z = sae.encode(x)
    assert int((z > 0).sum()) == 3 * 40
    per_row = (z > 0).sum(-1)
    assert per_row.max() > per_row.min()  # a batch budget, not a per-token one
    # the kept entries are the 120 largest of the whole batch
    pre = sae.pre_acts(x)
    assert float(z[z > 0].min().detach()) >= float(pre.detach().reshape(-1).topk(120).values[-1])
    # inference: the threshold rule
    sae.eval()
    sae.threshold.fill_(50.5)
    z_eval = sae.encode(x)
    assert torch.equal(z_eval, pre.relu() * (pre > 50.5))


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_save_load_round_trip_is_exact(tmp_path, kind):
    from safetensors import safe_open

    sae = _sae(kind, d_in=16, d_sae=48, k=4)
    with torch.no_grad():
        sae.input_scale.fill_(0.125)  # a power of two, as set_input_scale chooses: folding it is exact
        sae.threshold.fill_(0.3)
    sae.eval()
    sae.save(tmp_path / "s", log_sparsity=torch.full((48,), -2.0))
    with safe_open(str(tmp_path / "s" / "sae_weights.safetensors"), framework="pt") as f:
        shapes = {name: tuple(f.get_tensor(name).shape) for name in f.keys()}  # noqa: SIM118
    expected = {"W_enc": (16, 48), "b_enc": (48,), "W_dec": (48, 16), "b_dec": (16,)}
    if kind == "batchtopk":
        expected["threshold"] = (48,)
    assert shapes == expected
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert EXPECTED_CFG_KEYS <= set(cfg)
    assert (EXPECTED_TOPK_KEYS <= set(cfg)) == (kind == "topk")
    assert cfg["architecture"] == ("topk" if kind == "topk" else "jumprelu")
    assert cfg["d_in"] == 16 and cfg["d_sae"] == 48 and cfg["normalize_activations"] == "none"
    assert cfg["hook_name"] == "blocks.1.hook_resid_post" and cfg["hook_layer"] == 1
    assert cfg["seqpos_slice"] == [1, None]
    if kind == "topk":
        assert cfg["k"] == 4 and cfg["activation_fn_kwargs"] == {"k": 4}

    back = SparseAutoencoder.load(tmp_path / "s")
    assert back.cfg.kind == kind and back.cfg.k == 4 and back.cfg.site == "layers.1.resid_out"
    assert float(back.input_scale) == 1.0  # folded into the weights
    x = torch.randn(64, 16) * 8
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back(x), sae(x))
    # and saving the loaded one gives the same files' tensors
    back.save(tmp_path / "t")
    for name in expected:
        with safe_open(str(tmp_path / "s" / "sae_weights.safetensors"), framework="pt") as a, \
                safe_open(str(tmp_path / "t" / "sae_weights.safetensors"), framework="pt") as b:
            assert torch.equal(a.get_tensor(name), b.get_tensor(name))


def test_saved_weights_follow_saelens_equations(tmp_path):
    """SAELens's TopKSAE.encode/decode on the saved tensors, written out, give our outputs."""
    from safetensors.torch import load_file

    sae = _sae(k=4)
    with torch.no_grad():
        sae.input_scale.fill_(4.0)
    sae.save(tmp_path / "s")
    w = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    x = torch.randn(10, 16)
    hidden_pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # apply_b_dec_to_input = True
    top = hidden_pre.topk(4, dim=-1)
    feats = torch.zeros_like(hidden_pre).scatter(-1, top.indices, top.values.relu())
    recon = feats @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(feats, sae.encode(x))
    torch.testing.assert_close(recon, sae(x))


def test_load_refuses_unreadable_directories(tmp_path):
    with pytest.raises(SAEError, match="not an SAE directory"):
        SparseAutoencoder.load(tmp_path / "missing")
    sae = _sae()
    sae.save(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text("{not json")
    with pytest.raises(SAEError, match="cannot read"):
        SparseAutoencoder.load(tmp_path / "s")
    sae.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["actlab"]["d_sae"] = 65
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="tensor W_enc"):
        SparseAutoencoder.load(tmp_path / "s")
    cfg["architecture"] = "standard"
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="not supported"):
        SparseAutoencoder.load(tmp_path / "s")


def test_config_errors():
    with pytest.raises(SAEError, match="d_sae must be at least 1"):
        SAEConfig(d_in=8, d_sae=0)
    with pytest.raises(SAEError, match="k must be between 1 and d_sae"):
        SAEConfig(d_in=8, d_sae=16, k=17)
    with pytest.raises(SAEError, match="unknown SAE kind"):
        SAEConfig(d_in=8, d_sae=16, k=2, kind="relu")


def test_hook_names_map_both_ways():
    for site in ("layers.15.resid_out", "layers.2.mlp.down_in", "layers.0.attn.qkv_in"):
        assert site_from_hook_name(saelens_hook_name(site)) == site
    assert saelens_hook_name("layers.3.mlp.act_out") == "layers.3.mlp.act_out"  # no TransformerLens twin


def test_saelens_loads_it_when_installed(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = _sae(k=4)
    sae.save(tmp_path / "s")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    x = torch.randn(8, 16)
    torch.testing.assert_close(theirs.encode(x), sae.encode(x))


# ------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    import typer
    from typer.testing import CliRunner

    from actlab.cli.common import guarded
    from actlab.cli.sae import sae

    app = typer.Typer()
    app.command()(guarded(sae))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


TINY = ("--model", "random:tiny-llama", "--seq-len", "32", "--threads", "1")


def test_cli_train_then_eval(cli, tmp_path):
    out = tmp_path / "sae"
    r = cli("train", *TINY, "--site", "layers.1.resid_out", "--d-sae", "64", "--k", "4", "--tokens", "2048",
            "--sae-batch", "128", "--buffer-batches", "2", "--eval-tokens", "256", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["d_in"] == 64 and summary["train"]["steps"] > 0 and summary["eval"]["tokens"] > 0
    assert {p.name for p in out.iterdir()} >= {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors",
                                                "metrics.json"}
    r = cli("eval", out, *TINY, "--tokens", "256", "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout[r.stdout.index("{"):])["eval"]
    assert ev["fvu"] == pytest.approx(summary["eval"]["fvu"], rel=1e-4)  # the same eval windows, the saved SAE
    # another model: refused in one line
    r = cli("eval", out, "--model", "random:tiny-qwen2", "--seq-len", "32", "--tokens", "256")
    assert r.exit_code == 2 and "error:" in r.output and "trained on random:tiny-llama" in r.output


def test_cli_errors(cli, tmp_path):
    r = cli("train", *TINY, "--site", "layers.15.resid_out", "--d-sae", "64", "--k", "4", "--tokens", "512",
            "--out", tmp_path / "a")
    assert r.exit_code == 2 and "error:" in r.output and "layers.15.resid_out" in r.output
    r = cli("train", *TINY, "--d-sae", "0", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--d-sae must be positive" in r.output
    r = cli("train", *TINY, "--d-sae", "8", "--k", "9", "--out", tmp_path / "c")
    assert r.exit_code == 2 and "--k 9 is more than --d-sae 8" in r.output
    r = cli("eval", tmp_path / "nothing", *TINY)
    assert r.exit_code == 2 and "not an SAE directory" in r.output
    r = cli("fit", *TINY)
    assert r.exit_code == 2 and "unknown action" in r.output
