"""Semi-NMF: recovers a planted factorisation, codes stay nonnegative, sampling stays bounded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from actlab.interp.nmf import NMFError, fvu, nonneg_codes, sample_tokens, semi_nmf


def _planted(n: int = 600, d: int = 40, r: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, r, generator=g) * (torch.rand(n, r, generator=g) < 0.4)  # sparse, nonnegative
    comps = torch.randn(d, r, generator=g)  # any sign, like MLP activations
    x = codes @ comps.T + 0.01 * torch.randn(n, d, generator=g)
    return x, codes, comps


def _match(found: torch.Tensor, true: torch.Tensor) -> float:
    """Mean over true columns of the best |cosine| with a found column."""
    cos = F.normalize(true, dim=0).T @ F.normalize(found, dim=0)
    return float(cos.abs().max(dim=1).values.mean())


def test_recovers_a_planted_factorisation_better_than_random():
    x, codes, comps = _planted()
    result = semi_nmf(x, rank=5, iters=500)
    assert bool((result.codes >= 0).all())
    assert result.fvu < 0.01, result.fvu
    assert _match(result.components, comps) > 0.9
    # random components with their best nonnegative codes explain far less
    rand = torch.randn_like(comps)
    assert fvu(x, nonneg_codes(x, rand) @ rand.T) > 10 * result.fvu
    assert _match(rand, comps) < 0.8
    # the error never goes up along the run (Ding's update is monotone)
    assert all(b <= a + 1e-9 for a, b in zip(result.history, result.history[1:], strict=False))


def test_transform_of_new_tokens():
    x, _, _ = _planted(seed=1)
    result = semi_nmf(x[:400], rank=5, iters=400)
    g_new = result.transform(x[400:])
    assert bool((g_new >= 0).all()) and g_new.shape == (200, 5)
    assert fvu(x[400:], g_new @ result.components.T) < 0.02


def test_errors():
    with pytest.raises(NMFError, match="rank"):
        semi_nmf(torch.randn(3, 4), rank=5)
    with pytest.raises(NMFError, match="tokens, d"):
        semi_nmf(torch.randn(3, 4, 2), rank=1)
    with pytest.raises(NMFError, match="no tokens"):
        sample_tokens(iter([]), 10)


def test_sample_tokens_is_bounded_and_uniform():
    chunks = [torch.arange(i, i + 100, dtype=torch.float32)[:, None].repeat(1, 3) for i in range(0, 10_000, 100)]
    s = sample_tokens(chunks, 500, seed=0)
    assert s.shape == (500, 3)
    assert len(set(s[:, 0].tolist())) > 450  # mostly distinct rows
    # uniform over the stream: the mean index is near the middle, early and late tokens both present
    assert 4000 < float(s[:, 0].mean()) < 6000
    assert float(s[:, 0].min()) < 1000 and float(s[:, 0].max()) > 9000
    short = sample_tokens([torch.ones(7, 2)], 500)
    assert short.shape == (7, 2)


def test_site_semi_nmf_on_a_tiny_model():
    import actlab
    from actlab.interp.nmf import site_semi_nmf

    model, _ = actlab.load_model("random:tiny-llama")
    windows = torch.randint(3, 500, (8, 32), generator=torch.Generator().manual_seed(0))
    out = site_semi_nmf(model, "layers.1.mlp.down_in", windows, rank=8, max_tokens=200, iters=100)
    assert out["tokens_fit"] == 150 and out["tokens_heldout"] == 50
    assert bool((out["result"].codes >= 0).all()) and out["result"].components.shape == (128, 8)
    assert 0 < out["fvu_fit"] < 1 and out["fvu_heldout"] < 1.2
    # more components explain more of the same tokens
    more = site_semi_nmf(model, "layers.1.mlp.down_in", windows, rank=32, max_tokens=200, iters=100)
    assert more["fvu_fit"] < out["fvu_fit"]
