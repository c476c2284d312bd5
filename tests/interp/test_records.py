"""Neuron records against brute force: top/bottom-K, moments, histogram, token sample, merge, state."""

from __future__ import annotations

import pytest
import torch

import actlab
from actlab.activations.sites import SiteError
from actlab.interp.records import (
    NeuronRecords,
    RecordsConfig,
    RecordsError,
    context_activations,
    load_records,
    record_neurons,
    save_records,
    token_hash,
)

SEQ = 16


def _windows(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 500, (n, SEQ), generator=g)


def _all_acts(model, windows, sites, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Every activation, [tokens, n] with row = window * SEQ + position (the brute-force reference).

    Batched as the records' run is, so that the activations are bit-identical (a matmul's rounding may
    depend on its batch shape)."""
    seen: dict[str, list[torch.Tensor]] = {}

    def grab(site, x):
        seen.setdefault(site.name, []).append(x.detach().reshape(-1, x.shape[-1]).clone())

    with torch.inference_mode(), actlab.capture(model, sites=sites, fn=grab):
        for i in range(0, windows.shape[0], batch_size):
            model(input_ids=windows[i : i + batch_size], use_cache=False)
    return {k: torch.cat(v) for k, v in seen.items()}


def _brute_top(x: torch.Tensor, k: int, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort over tokens in (window, position) order: ties go to the earlier token."""
    s = x.sort(dim=0, descending=largest, stable=True)
    return s.values[:k].T, s.indices[:k].T  # [n, k]


def _as_tensors(ctxs, seq=SEQ):
    return (torch.tensor([c.value for c in ctxs]), torch.tensor([c.window * seq + c.position for c in ctxs]))


def _check_top(r: NeuronRecords, x: torch.Tensor, k: int) -> None:
    tv, ti = _brute_top(x, k)
    bv, bi = _brute_top(x, k, largest=False)
    for i in range(r.n):
        v, t = _as_tensors(r.top(i))
        assert torch.equal(v, tv[i]) and torch.equal(t, ti[i]), f"top of neuron {i}"
        v, t = _as_tensors(r.bottom(i))
        assert torch.equal(v, bv[i]) and torch.equal(t, bi[i]), f"bottom of neuron {i}"


@pytest.mark.parametrize(
    "preset, site", [("tiny-llama", "mlp.act_out"), ("tiny-llama", "mlp.down_in"), ("tiny-llama", "resid_out"),
                     ("tiny-gpt2", "mlp.act_out"), ("tiny-gpt_neox", "mlp.act_out")],
)
def test_top_k_equals_brute_force(preset, site):
    model, _ = actlab.load_model(f"random:{preset}")
    windows = _windows()
    recs = record_neurons(model, windows, site, k=5, batch_size=4, progress=False)  # batches of 4 and 2
    ref = _all_acts(model, windows, site, batch_size=4)
    assert list(recs) == list(ref) and len(recs) == 2
    for name, r in recs.items():
        x = ref[name]
        assert r.count == x.shape[0] == windows.numel() and r.n == x.shape[1]
        _check_top(r, x, 5)
        torch.testing.assert_close(r.max, x.amax(0))
        torch.testing.assert_close(r.min, x.amin(0))
        x64 = x.double()
        torch.testing.assert_close(r.mean, x64.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.std, x64.std(0, correction=0), rtol=1e-4, atol=1e-6)
        for j, e in enumerate(r.config.channel_eps):
            torch.testing.assert_close(r.freqs[j], (x64.abs() > e).double().mean(0))


def test_ties_broken_by_earlier_token():
    """Integer-valued ReLU-like data (many ties, zeros) fed in shuffled batches still gives the stable order."""
    g = torch.Generator().manual_seed(1)
    n_tok, n = 60, 7
    x = torch.randint(0, 3, (n_tok, n), generator=g).float() * (torch.rand(n_tok, n, generator=g) < 0.3)
    r = NeuronRecords("test", n, RecordsConfig(k=6))
    tok = torch.arange(n_tok)
    for part in torch.randperm(n_tok, generator=g).split(13):  # every batch out of token order
        r.update(x[part], tok[part] // SEQ, tok[part] % SEQ)
    _check_top(r, x, 6)
    assert r.top(0)[0].value == float(x[:, 0].max())


def test_from_activations_stream_equals_brute_force():
    g = torch.Generator().manual_seed(2)
    x = torch.relu(torch.randn(48, 5, generator=g))  # [tokens, latents], SAE-like
    tok = torch.arange(48)
    stream = [(x[s], tok[s] // SEQ, tok[s] % SEQ) for s in (slice(0, 20), slice(20, 48))]
    r = NeuronRecords.from_activations_stream("sae.latents", stream, RecordsConfig(k=4))
    assert r.count == 48 and r.layer is None
    _check_top(r, x, 4)
    with pytest.raises(RecordsError, match="no batch"):
        NeuronRecords.from_activations_stream("sae.latents", [])


def test_merge_of_shards_equals_one_pass(tiny_llama):
    model, _ = tiny_llama
    windows = _windows(7)
    cfg = RecordsConfig(sample_tokens=40)
    whole = record_neurons(model, windows, "layers.1.mlp.act_out", k=4, batch_size=3, progress=False, config=cfg)
    # the same batches as the whole run (windows 0-2, 3-5, 6), so every activation is bit-identical
    a = record_neurons(model, windows[:3], "layers.1.mlp.act_out", k=4, batch_size=3, progress=False, config=cfg)
    b = record_neurons(model, windows[3:], "layers.1.mlp.act_out", k=4, batch_size=3, progress=False,
                       window_offset=3, config=cfg)
    name = "layers.1.mlp.act_out"
    m, w = b[name].merge(a[name]), whole[name]  # order of merging does not matter
    assert m.count == w.count
    for key in ("top_v", "top_t", "bot_v", "bot_t", "above", "hist_counts", "sample_key", "sample_tok",
                "max", "min", "sample_val"):
        assert torch.equal(getattr(m, key), getattr(w, key)), key
    torch.testing.assert_close(m.mean, w.mean)
    torch.testing.assert_close(m.std, w.std)
    assert m.top(3) == w.top(3) and m.quantile_samples(3) == w.quantile_samples(3)


def test_histogram_and_token_sample(tiny_llama):
    model, _ = tiny_llama
    windows = _windows(5)
    name = "layers.0.mlp.act_out"
    r = record_neurons(model, windows, name, k=3, progress=False, config=RecordsConfig(sample_tokens=30))[name]
    x = _all_acts(model, windows, name)[name]
    # histogram: every token counted once; bins by the documented edges (right-closed above zero,
    # left-closed below), allowing a rare value within float rounding of an edge
    assert torch.equal(r.hist_counts.sum(1), torch.full((r.n,), x.shape[0]))
    e = r.hist_edges().float()
    cat = torch.where(x < 0, torch.bucketize(x, e, right=True) - 1, torch.bucketize(x, e) - 1)  # [N, n]
    cat[x == 0] = r.config.hist_bins + 2  # exact zeros count in [0, lo]
    brute = torch.stack([torch.bincount(cat[:, i], minlength=e.numel() - 1) for i in range(r.n)])
    assert (brute != r.hist_counts).sum() <= 4
    edges, counts = r.hist(5)
    assert len(edges) == len(counts) + 1 and sum(counts) == x.shape[0]
    assert edges[0] == pytest.approx(float(x[:, 5].min())) and edges[-1] == pytest.approx(float(x[:, 5].max()))
    # token sample: the 30 tokens with the smallest hash, and each quantile sample's value is the activation there
    tok = torch.arange(x.shape[0])
    tok = (tok // SEQ << 24) | (tok % SEQ)
    want = tok[token_hash(tok).argsort()[:30]]
    assert torch.equal(r.sample_tok, want)
    qs = r.quantile_samples(5)
    assert list(qs) == [0.5, 0.9, 0.99] and all(len(v) == 2 for v in qs.values())
    for ctxs in qs.values():
        for c in ctxs:
            assert c.value == pytest.approx(float(x[c.window * SEQ + c.position, 5]), rel=1e-5, abs=1e-6)
    assert len(token_hash(torch.arange(100_000)).unique()) == 100_000


def test_state_round_trip(tmp_path, tiny_llama):
    model, _ = tiny_llama
    recs = record_neurons(model, _windows(3), "layers.*.mlp.act_out", k=3, progress=False)
    save_records(recs, tmp_path / "recs")
    back = load_records(tmp_path / "recs")
    assert list(back) == list(recs)
    for name, r in recs.items():
        b = back[name]
        assert (b.site, b.n, b.count, b.config) == (r.site, r.n, r.count, r.config)
        for k, v in r.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
        assert b.top(2) == r.top(2) and b.hist(2) == r.hist(2) and b.summary_rows() == r.summary_rows()
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_summary_rows_and_freq_eps():
    model, _ = actlab.load_model("random:tiny-opt")  # ReLU: frequency counts exact non-zeros
    r = record_neurons(model, _windows(2), "layers.0.mlp.act_out", k=2, progress=False)["layers.0.mlp.act_out"]
    assert r.config.freq_eps == 0.0
    rows = r.summary_rows()
    assert len(rows) == r.n and rows[4]["layer"] == 0 and rows[4]["index"] == 4
    assert rows[4]["freq"] == pytest.approx(float(r.freqs[0, 4])) and rows[4]["max"] == float(r.max[4])
    model, _ = actlab.load_model("random:tiny-llama")  # SiLU is never exactly 0: profile's 0.01
    r = record_neurons(model, _windows(2), "layers.0.mlp.act_out", k=2, progress=False)["layers.0.mlp.act_out"]
    assert r.config.freq_eps == 0.01 and torch.equal(r.freq, r.freqs[1])


def test_context_activations(tiny_llama):
    model, _ = tiny_llama
    windows = _windows(4)
    name = "layers.1.mlp.act_out"
    r = record_neurons(model, windows[1:], name, k=3, progress=False, window_offset=1)[name]
    ctx = r.top(9)[0]
    ids, acts, center = context_activations(model, windows, name, 9, ctx, before=5, after=2)
    lo = max(0, ctx.position - 5)
    assert ids == windows[ctx.window, lo : min(SEQ, ctx.position + 3)].tolist()
    assert len(acts) == len(ids) and center == ctx.position - lo
    assert acts[center] == pytest.approx(ctx.value, rel=1e-4, abs=1e-5)
    with pytest.raises(RecordsError, match="out of range"):
        context_activations(model, windows, name, 10_000, ctx)
    with pytest.raises(RecordsError, match="window"):
        context_activations(model, windows[:1], name, 9, ctx)


def test_bad_input_raises_clear_errors(tiny_llama):
    model, _ = tiny_llama
    windows = _windows(2)
    with pytest.raises(SiteError):
        record_neurons(model, windows, "mlp.nonesuch", progress=False)
    with pytest.raises(RecordsError, match="k must be"):
        record_neurons(model, windows, k=0, progress=False)
    with pytest.raises(RecordsError, match="non-empty"):
        record_neurons(model, torch.zeros(0, SEQ, dtype=torch.long), progress=False)
    r = NeuronRecords("s", 4)
    with pytest.raises(RecordsError, match="out of range"):
        r.top(4)
    with pytest.raises(RecordsError, match="NaN or inf"):
        r.update(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]), torch.zeros(1), torch.zeros(1))
    with pytest.raises(RecordsError, match="channels"):
        r.update(torch.zeros(2, 5), torch.zeros(2), torch.arange(2))
    with pytest.raises(RecordsError, match="merge"):
        r.merge(NeuronRecords("s", 5))
    with pytest.raises(RecordsError, match="not neuron records|cannot read"):
        NeuronRecords.load("/nonexistent/records")
