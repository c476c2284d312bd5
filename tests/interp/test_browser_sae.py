"""The neuron browser's data for SAE latents, against brute force on a tiny random model and a random SAE."""

from __future__ import annotations

import math

import pytest
import torch

from actlab.activations.hooks import capture
from actlab.activations.sites import SiteError
from actlab.interp.browser_data import BrowserDataError
from actlab.interp.browser_sae import (
    DEFAULT_LATENTS,
    _remove_latents,
    build_sae_site_data,
    latent_ablation_effect,
    latent_directions,
)
from actlab.interp.lm_head import decode_directions
from actlab.interp.sae import SAEConfig, SAEError, SparseAutoencoder
from actlab.interp.sae_train import _read_site, latent_activations, resolve_site, sae_for_site


def _sae(model, site: str, tmp_path, d_sae: int = 48, k: int = 4, exclude_first: int = 1) -> SparseAutoencoder:
    """A random SAE for ``site``, saved and read back (the layout the CLI reads), with biases that make latents fire."""
    sae = sae_for_site(model, site, d_sae=d_sae, k=k, exclude_first=exclude_first, seed=3)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(0.0, 0.2, d_sae))
        sae.input_scale.fill_(4.0)  # folded into the weights on save: the directions then carry 1/4
    sae.save(tmp_path / "sae")
    loaded = SparseAutoencoder.load(tmp_path / "sae")
    # the directions are in the site's units either way: W_dec / s before saving, W_dec (s folded in) after
    torch.testing.assert_close(latent_directions(sae, [0, 5]), loaded.W_dec.detach()[[0, 5]])
    return loaded


@pytest.fixture
def windows():
    return torch.randint(3, 250, (10, 20), generator=torch.Generator().manual_seed(0))


def test_latent_pages_match_a_brute_force_encoding(tiny_llama, windows, tmp_path):
    model, tok = tiny_llama
    sae = _sae(model, "layers.1.resid_out", tmp_path)
    chosen = [0, 7, 47]
    data = build_sae_site_data(model, tok, windows, sae, k=3, latents=chosen)
    assert data["site_kind"] == "resid_out.sae" and data["n_tokens"] == windows.numel()
    assert [n["id"] for n in data["neurons"]] == [f"layers.1.resid_out.sae/{i}" for i in chosen]
    assert {n["kind"] for n in data["neurons"]} == {"sae"} and {n["layer"] for n in data["neurons"]} == {1}

    # every latent on every token the SAE reads (positions from exclude_first on), straight from the SAE
    z = torch.full((*windows.shape, sae.cfg.d_sae), math.nan)
    for acts, win, pos in latent_activations(model, sae, windows, batch_size=3):
        z[win, pos] = acts
    site = resolve_site(model, "layers.1.resid_out")
    direct = sae.encode(_read_site(model, site, windows)[:, 1:].float())  # another way to the same numbers
    torch.testing.assert_close(z[:, 1:], direct)
    for n in data["neurons"]:
        i = n["index"]
        col = z[..., i]
        assert n["max"] == pytest.approx(float(col.nan_to_num(-math.inf).max()), abs=1e-6)
        assert n["freq"] == pytest.approx(float((col[:, 1:] > 0).float().mean()))
        assert 1 <= len(n["top_contexts"]) <= 3
        for c in n["top_contexts"]:
            assert c["acts"][c["center"]] == pytest.approx(c["value"], rel=1e-4, abs=1e-6)  # shown = recorded
            lo = c["position"] - c["center"]
            shown = col[c["window"], lo : lo + len(c["acts"])]
            torch.testing.assert_close(torch.tensor(c["acts"]), shown, equal_nan=True, rtol=1e-4, atol=1e-6)
            assert (lo > 0) or math.isnan(c["acts"][0])  # position 0 is never read by the SAE: NaN, not a value
            assert c["tokens"] == [tok.decode([t]) for t in windows[c["window"], lo : lo + len(c["acts"])].tolist()]

    # LM-head tokens: the decoder rows (site units: W_dec on disk already carries 1/s) through decode_directions
    top_ids, top_s, bot_ids, _ = decode_directions(model, sae.W_dec.detach()[chosen], k=10)
    for row, n in enumerate(data["neurons"]):
        assert [t for t, _ in n["lm_head"]["top"]] == [tok.decode([t]) for t in top_ids[row].tolist()]
        assert [t for t, _ in n["lm_head"]["bottom"]] == [tok.decode([t]) for t in bot_ids[row].tolist()]
        assert [s for _, s in n["lm_head"]["top"]] == pytest.approx(top_s[row].tolist(), rel=1e-5)
        assert n["ablation"] is None


def test_mlp_latents_decode_through_the_down_projection_and_others_not_at_all(tiny_llama, windows, tmp_path):
    model, tok = tiny_llama
    sae = _sae(model, "layers.0.mlp.down_in", tmp_path)
    data = build_sae_site_data(model, tok, windows, sae, k=2, latents=[1, 2])
    w_down = model.model.layers[0].mlp.down_proj.weight.detach()  # [d_model, d_ff]
    top_ids = decode_directions(model, sae.W_dec.detach()[[1, 2]] @ w_down.T, k=10)[0]
    for row, n in enumerate(data["neurons"]):
        assert [t for t, _ in n["lm_head"]["top"]] == [tok.decode([t]) for t in top_ids[row].tolist()]
    qkv = _sae(model, "layers.0.attn.qkv_in", tmp_path / "qkv")
    assert build_sae_site_data(model, tok, windows, qkv, k=2, latents=[0])["neurons"][0]["lm_head"] is None


def test_the_default_selection_is_the_first_latents(tiny_llama, windows, tmp_path):
    model, tok = tiny_llama
    sae = _sae(model, "layers.1.resid_out", tmp_path, d_sae=DEFAULT_LATENTS + 8, k=4)
    data = build_sae_site_data(model, tok, windows[:2], sae, k=1)
    assert [n["index"] for n in data["neurons"]] == list(range(DEFAULT_LATENTS))


def test_removing_a_latent_subtracts_its_decoder_contribution(tiny_llama, windows, tmp_path):
    model, _ = tiny_llama
    sae = _sae(model, "layers.1.resid_out", tmp_path, exclude_first=2)
    site = resolve_site(model, "layers.1.resid_out")
    x = _read_site(model, site, windows[:3])  # [3, T, d]
    with torch.no_grad():
        z = sae.encode(x)  # [3, T, d_sae]
    # latents that fire both where the SAE reads and where it does not, so both checks below can fail
    both = (z[:, :2].gt(0).flatten(0, 1).any(0) & z[:, 2:].gt(0).flatten(0, 1).any(0)).nonzero()[:2, 0].tolist()
    assert len(both) == 2
    out = _remove_latents(sae, both)(site, x)
    want = x[:, 2:] - z[:, 2:, both] @ sae.W_dec.detach()[both]
    torch.testing.assert_close(out[:, 2:], want)
    assert torch.equal(out[:, :2], x[:, :2])  # positions the SAE does not read are left alone


def test_latent_ablation_effect(tiny_llama, windows, tmp_path):
    model, tok = tiny_llama
    sae = _sae(model, "layers.1.resid_out", tmp_path)
    site = resolve_site(model, "layers.1.resid_out")
    z = torch.cat([a for a, _, _ in latent_activations(model, sae, windows)])
    fires, silent = int(z.gt(0).sum(0).argmax()), z.gt(0).sum(0).eq(0).nonzero()
    eff = latent_ablation_effect(model, sae, windows, fires)
    assert eff.site == "layers.1.resid_out.sae" and eff.neurons == [fires] and eff.mode == "latent-zero"
    assert eff.delta_loss != 0.0 and len(eff.tokens_most_affected) == 10
    # the same loss as the model run with the hook by hand
    with torch.no_grad(), capture(model, sites={site.name: site}, fn=_remove_latents(sae, [fires])):
        logits = model(input_ids=windows).logits.float()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert eff.loss_ablated == pytest.approx(float(ce), rel=1e-4)
    if silent.numel():  # a latent that never fires changes nothing
        assert latent_ablation_effect(model, sae, windows, int(silent[0, 0])).delta_loss == pytest.approx(0.0, abs=1e-6)
    data = build_sae_site_data(model, tok, windows, sae, k=2, latents=[fires], ablate=True,
                               ablate_windows=windows)
    assert data["neurons"][0]["ablation"]["delta_loss"] == pytest.approx(eff.delta_loss, rel=1e-5)


def test_an_sae_that_does_not_fit_the_model_is_refused(tiny_llama, windows, tmp_path):
    model, tok = tiny_llama
    sae = _sae(model, "layers.1.resid_out", tmp_path)
    with pytest.raises(BrowserDataError, match="outside layers.1.resid_out.sae"):
        build_sae_site_data(model, tok, windows, sae, latents=[3, 48])
    with pytest.raises(BrowserDataError, match="outside"):
        latent_ablation_effect(model, sae, windows, [-1])
    narrow = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2, site="layers.1.resid_out"))
    with pytest.raises(SAEError, match="8"):
        build_sae_site_data(model, tok, windows, narrow)
    deep = SparseAutoencoder(SAEConfig(d_in=sae.cfg.d_in, d_sae=16, k=2, site="layers.9.resid_out"))
    with pytest.raises(SiteError):
        build_sae_site_data(model, tok, windows, deep)
    nowhere = SparseAutoencoder(SAEConfig(d_in=sae.cfg.d_in, d_sae=16, k=2, site=""))
    with pytest.raises(SAEError, match="names no site"):
        build_sae_site_data(model, tok, windows, nowhere)
