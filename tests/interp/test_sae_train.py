"""The streaming SAE trainer and its metrics, on synthetic sparse data and a tiny random model."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from actlab.interp.sae import SAEConfig, SAEError, SparseAutoencoder, sparse_decode
from actlab.interp.sae_train import (
    SAETrainArgs,
    evaluate_sae,
    latent_activations,
    sae_for_site,
    site_activations,
    train_sae,
)


def _dictionary(n_atoms: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    return atoms / atoms.norm(dim=1, keepdim=True)


def _sparse_source(atoms: torch.Tensor, active: int, chunk: int = 1024, seed: int = 1):
    """Endless chunks of x = Σ c_i · atom_i over ``active`` random atoms per token, c_i ~ U[1, 3]."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = atoms.shape[0]
    while True:
        idx = torch.rand(chunk, n_atoms, generator=g).topk(active, dim=1).indices
        coef = torch.zeros(chunk, n_atoms).scatter(1, idx, 1 + 2 * torch.rand(chunk, active, generator=g))
        yield coef @ atoms + 0.5  # an offset, for b_dec to find


def test_trains_to_low_fvu_on_planted_sparse_data():
    atoms = _dictionary(64, 32, seed=0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=128, k=4, site="synthetic"), seed=0)
    args = SAETrainArgs(max_tokens=150_000, batch_size=512, buffer_batches=4, lr=3e-3, dead_tokens=5_000)
    result = train_sae(_sparse_source(atoms, active=3), sae, args)
    assert result.tokens >= 150_000 and result.steps > 250
    x = next(_sparse_source(atoms, active=3, chunk=4096, seed=99))  # held out
    with torch.no_grad():
        fvu = float((x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        assert fvu < 0.1, fvu
        assert result.fvu < 0.15 and result.l0 <= 4
        # the planted atoms are found: nearly all have a decoder row at cosine > 0.9
        cos = (atoms @ F.normalize(sae.W_dec, dim=1).T).max(dim=1).values
        assert float((cos > 0.9).float().mean()) > 0.9
        # an untrained SAE (the same initialisation, the same b_dec) is far from it
        fresh = SparseAutoencoder(SAEConfig(d_in=32, d_sae=128, k=4), seed=0)
        fresh.b_dec.copy_(sae.b_dec)
        fresh.input_scale.copy_(sae.input_scale)
        assert float((x - fresh(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()) > 5 * fvu


def test_decoder_rows_stay_unit_norm_and_batchtopk_learns_a_threshold():
    atoms = _dictionary(64, 16, seed=2)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, k=3, kind="batchtopk"), seed=0)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)  # off the sphere: one step puts every row back
    result = train_sae(_sparse_source(atoms, active=2, chunk=256), sae,
                       SAETrainArgs(max_tokens=256 * 2 + 64, batch_size=64, buffer_batches=2, lr=1e-3))
    assert result.steps >= 1
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    assert math.isfinite(float(sae.threshold[0])) and float(sae.threshold[0]) > 0
    assert not sae.training
    x = next(_sparse_source(atoms, active=2, chunk=64))
    pre = sae.pre_acts(x)
    assert torch.equal(sae.encode(x), pre.relu() * (pre > sae.threshold))  # inference: the threshold rule


def test_sparse_decode_equals_dense_decode():
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=3), seed=0)
    z = sae.encode(torch.randn(20, 8))
    z[3] = 0  # a token with no active latent: an empty bag
    torch.testing.assert_close(sparse_decode(sae, z), sae.decode_normalized(z))


def test_sparse_gradient_encoder_equals_the_dense_formula():
    torch.manual_seed(0)
    a = SparseAutoencoder(SAEConfig(d_in=12, d_sae=40, k=3), seed=0)
    b = SparseAutoencoder(SAEConfig(d_in=12, d_sae=40, k=3), seed=0)
    with torch.no_grad():
        for m in (a, b):
            m.b_dec.copy_(torch.linspace(-1, 1, 12))
            m.b_enc.copy_(torch.linspace(-0.5, 0.5, 40))
            m.input_scale.fill_(0.5)
    x = torch.randn(30, 12)

    def loss(m, dense):
        pre = (x * m.input_scale - m.b_dec) @ m.W_enc + m.b_enc if dense else m.pre_acts(x)
        err = x * m.input_scale - sparse_decode(m, m.activate(pre))
        return err.pow(2).sum(-1).mean()

    loss(a, False).backward()
    loss(b, True).backward()
    for name in ("W_enc", "b_enc", "b_dec", "W_dec"):
        torch.testing.assert_close(getattr(a, name).grad, getattr(b, name).grad, rtol=1e-5, atol=1e-6)
    assert int((a.W_enc.grad != 0).any(0).sum()) < 40  # only the selected latents' encoder columns move


def test_stops_at_max_seconds_with_an_endless_source():
    atoms = _dictionary(32, 8, seed=3)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=2), seed=0)
    t0 = time.perf_counter()
    result = train_sae(_sparse_source(atoms, 2, chunk=128), sae,
                       SAETrainArgs(max_seconds=1.0, batch_size=128, buffer_batches=2))
    assert 0.9 <= time.perf_counter() - t0 < 5 and result.steps > 0


def test_aux_loss_revives_dead_latents():
    """Half the latents start with a bias that keeps them out of every top-k: without AuxK they never get a
    gradient and stay dead; with it they learn to fire (every latent is needed: as many atoms as latents)."""
    atoms = _dictionary(64, 32, seed=4)

    def run(aux_coef: float) -> float:
        sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=64, k=3, normalization="none"), seed=0)
        with torch.no_grad():
            sae.b_enc[32:] = -3.0
        r = train_sae(_sparse_source(atoms, 2, chunk=512), sae,
                      SAETrainArgs(max_tokens=100_000, batch_size=256, buffer_batches=2, lr=5e-3, aux_coef=aux_coef,
                                   dead_tokens=1_000))
        return r.dead_fraction

    assert run(aux_coef=0.0) >= 0.45
    assert run(aux_coef=1.0) < 0.1


def test_massive_tokens_are_left_out_of_training():
    atoms = _dictionary(32, 16, seed=5)

    def with_sinks():  # every 100th token an attention-sink-like outlier, norm ~1000x the others
        for chunk in _sparse_source(atoms, 2, chunk=500):
            chunk[::100] *= 1000.0
            yield chunk

    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=32, k=2), seed=0)
    r = train_sae(with_sinks(), sae, SAETrainArgs(max_tokens=5_000, batch_size=100, buffer_batches=4))
    assert r.dropped == r.tokens // 100
    assert r.input_scale == 1.0  # set from the kept tokens: the outliers make it 2**-6 (below)
    kept = SparseAutoencoder(SAEConfig(d_in=16, d_sae=32, k=2), seed=0)
    r_all = train_sae(with_sinks(), kept, SAETrainArgs(max_tokens=5_000, batch_size=100, buffer_batches=4,
                                                       max_norm_ratio=None))
    assert r_all.dropped == 0 and r_all.input_scale <= 1 / 32


def test_source_must_match_width():
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2))
    with pytest.raises(SAEError, match="activations are 9 wide"):
        train_sae(iter([torch.randn(64, 9)]), sae, SAETrainArgs(batch_size=16))
    with pytest.raises(SAEError, match="gave no tokens"):
        train_sae(iter([]), sae, SAETrainArgs(batch_size=16))


# ------------------------------------------------------------------------------------------- on a model


@pytest.fixture(scope="module")
def tiny():
    import actlab

    torch.manual_seed(0)
    model, tok = actlab.load_model("random:tiny-llama")
    windows = torch.randint(3, 500, (6, 24), generator=torch.Generator().manual_seed(0))
    return model, windows


def _full_site(model, windows, site="layers.0.resid_out"):
    import actlab

    with actlab.capture(model, sites=site) as cap:
        model(windows, use_cache=False)
    return cap.tensors[site]


def test_site_activations_stop_early_but_read_the_same_tensor(tiny):
    model, windows = tiny
    chunks = list(site_activations(model, "layers.0.resid_out", windows, batch_size=4, exclude_first=1))
    assert [c.shape for c in chunks] == [torch.Size([4 * 23, 64]), torch.Size([2 * 23, 64])]
    full = _full_site(model, windows)[:, 1:].reshape(-1, 64)
    torch.testing.assert_close(torch.cat(chunks), full)
    shuffled = torch.cat(list(site_activations(model, "layers.0.resid_out", windows, 4, 1, shuffle_seed=0)))
    assert not torch.equal(shuffled, full)
    torch.testing.assert_close(shuffled.view(6, 23, 64).sum(0), full.view(6, 23, 64).sum(0))  # the same windows


def _trained(model, windows, kind="topk"):
    sae = sae_for_site(model, "layers.0.resid_out", d_sae=128, k=8, kind=kind, model_name="random:tiny-llama")
    train_sae(site_activations(model, sae.cfg.site, windows), sae,
              SAETrainArgs(batch_size=32, buffer_batches=2, max_tokens=10_000))
    return sae


def test_spliced_loss_equals_a_manual_splice(tiny):
    model, windows = tiny
    sae = _trained(model, windows.repeat(3, 1))
    r = evaluate_sae(model, sae, windows, batch_size=4)

    def nll(fn=None) -> float:
        import actlab

        ctx = actlab.capture(model, sites="layers.0.resid_out", fn=fn) if fn else None
        with torch.no_grad():
            if ctx:
                with ctx:
                    logits = model(windows, use_cache=False).logits
            else:
                logits = model(windows, use_cache=False).logits
        # targets 2.. (predicted from positions 1..): the positions whose context holds a spliced token
        return float(F.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]), windows[:, 2:].reshape(-1)))

    def splice(site, x):
        out = x.clone()
        out[:, 1:] = sae(x[:, 1:])
        return out

    def zero(site, x):
        out = x.clone()
        out[:, 1:] = 0
        return out

    assert r.loss_clean == pytest.approx(nll(), rel=1e-5)
    assert r.loss_spliced == pytest.approx(nll(splice), rel=1e-5)
    assert r.loss_zero_ablated == pytest.approx(nll(zero), rel=1e-5)
    assert r.loss_spliced != pytest.approx(r.loss_clean, rel=1e-6)
    x = _full_site(model, windows)[:, 1:].reshape(-1, 64)
    x_hat = sae(x).detach()
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert r.fvu == pytest.approx(fvu, rel=1e-4)
    assert r.l0 == pytest.approx(float((sae.encode(x) > 0).sum(-1).float().mean()), rel=1e-6)
    assert r.tokens == x.shape[0]
    assert r.recovered_vs_zero == pytest.approx(
        (r.loss_zero_ablated - r.loss_spliced) / (r.loss_zero_ablated - r.loss_clean))


def test_latent_activations_for_records(tiny):
    model, windows = tiny
    sae = _trained(model, windows, kind="batchtopk")
    got = list(latent_activations(model, sae, windows, batch_size=4))
    acts = torch.cat([a for a, _, _ in got])
    win = torch.cat([w for _, w, _ in got])
    pos = torch.cat([p for _, _, p in got])
    assert acts.shape == (6 * 23, 128) and win.shape == pos.shape == (6 * 23,)
    assert win.tolist() == [w for w in range(6) for _ in range(23)]
    assert pos.tolist() == list(range(1, 24)) * 6
    x = _full_site(model, windows)[:, 1:].reshape(-1, 64)
    torch.testing.assert_close(acts, sae.encode(x))
    assert math.isfinite(float(sae.threshold[0]))  # the threshold rule, not the batch rule, was used


def test_another_models_site_is_refused(tiny):
    import actlab
    from actlab.activations.sites import SiteError

    model, windows = tiny
    with pytest.raises(SiteError, match="layers.7.resid_out"):
        sae_for_site(model, "layers.7.resid_out", d_sae=16, k=2)
    sae = _trained(model, windows)
    other, _ = actlab.load_model("random:tiny-llama", seed=1)  # same shapes, other weights
    with pytest.raises(SAEError, match="different weights"):
        evaluate_sae(other, sae, windows)


def test_latent_records_top_contexts_are_the_brute_force_ones(tiny):
    pytest.importorskip("actlab.interp.records")
    from actlab.interp.sae_train import latent_records

    model, windows = tiny
    sae = _trained(model, windows)
    rec = latent_records(model, sae, windows, batch_size=4)
    x = _full_site(model, windows)[:, 1:]  # [6, 23, 64]
    acts = sae.encode(x)  # [6, 23, 128]
    j = int(acts.reshape(-1, 128).gt(0).sum(0).argmax())  # the latent that fires most
    flat = acts[..., j].reshape(-1)
    best = int(flat.argmax())
    top = rec.top(j)[0]
    assert top.value == pytest.approx(float(flat[best]))
    assert (top.window, top.position) == (best // 23, best % 23 + 1)
