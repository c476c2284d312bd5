"""SiteStats and its parts against direct numpy computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actlab.activations.cett import CettCurve
from actlab.activations.histogram import LogHistogram
from actlab.activations.moments import Moments
from actlab.activations.stats import SiteStats, StatsConfig, sample_index

CFG = StatsConfig()


# -- data -------------------------------------------------------------------------------------------------
def make(kind: str, n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if kind == "heavy":  # Cauchy-like tails and a few outlier channels
        x = x / torch.rand(n, d, generator=g).clamp(min=1e-3) ** 0.8
        x[:, : max(1, d // 8)] *= 50
    elif kind == "relu":  # exact zeros
        x = torch.relu(x - 0.3)
    elif kind == "shifted":  # large mean, small spread: cancellation test for the moments
        x = 1e4 + 0.01 * x
    elif kind == "nonfinite":
        x[0, 0] = float("nan")
        x[1, -1] = float("inf")
        x[2, 0] = -float("inf")
        x[3, :] = float("nan")
        x[4, 0] = 0.0
    return x


def ref_moments(v: np.ndarray) -> dict:
    v = v.astype(np.float64)
    n = v.size
    c = v - v.mean()
    m2, m3, m4 = (c**2).sum(), (c**3).sum(), (c**4).sum()
    return {
        "count": n,
        "mean": v.mean(),
        "var": m2 / n,
        "skew": math.sqrt(n) * m3 / m2**1.5,
        "kurtosis": n * m4 / m2**2 - 3.0,
    }


def ref_categories(a32: np.ndarray, edges32: np.ndarray) -> np.ndarray:
    """Category of each |x| in the [zero, underflow, bins..., overflow, nan] layout, by definition."""
    cat = np.searchsorted(edges32, a32, side="left") + 1  # edges[i-1] < a <= edges[i]
    cat[a32 == 0] = 0
    cat[np.isnan(a32)] = len(edges32) + 2
    return cat


# -- exact statistics ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["normal", "heavy", "relu", "shifted", "nonfinite"])
@pytest.mark.parametrize("d", [1, 3, 64])
def test_summary_matches_numpy(kind: str, d: int) -> None:
    x = make(kind, 300, d, seed=d)
    s = SiteStats(d, CFG)
    s.update(x[:120].reshape(4, 30, d))  # [batch, seq, d] is flattened
    s.update(x[120:])
    out = s.summary()
    xn = x.numpy().astype(np.float32)
    fin = np.isfinite(xn)
    ref = ref_moments(xn[fin])
    for k in ("mean", "var", "skew", "kurtosis"):
        # skew and excess kurtosis are O(1) and may be ~0: absolute tolerance for them
        assert out[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-5 if k in ("skew", "kurtosis") else 1e-9), k
    assert out["count"] == ref["count"]
    assert out["absmax"] == pytest.approx(float(np.abs(xn[fin]).max()))
    assert out["nan"] == int(np.isnan(xn).sum())
    assert out["inf"] == int(np.isinf(xn).sum())
    assert out["tokens"] == 300 and out["elements"] == xn.size
    a = np.abs(xn)[~np.isnan(xn)]
    for e in CFG.eps_grid:
        snapped = 0.0 if e == 0 else s.hist.snap(e)[1]
        want = float((a > np.float32(snapped)).mean())
        assert out["density"][format(snapped, ".6g")] == want  # exact: snapped to a float32 edge


@pytest.mark.parametrize("kind", ["normal", "heavy", "relu", "nonfinite"])
def test_per_channel_matches_numpy(kind: str) -> None:
    d = 16
    x = make(kind, 200, d, seed=3)
    s = SiteStats(d, CFG)
    for part in x.split(70):
        s.update(part)
    cs = s.channel_stats()
    xn = x.numpy().astype(np.float64)
    for j in range(d):
        col = xn[:, j]
        v = col[np.isfinite(col)]
        assert float(cs["mean"][j]) == pytest.approx(v.mean(), rel=1e-5, abs=1e-7)
        assert float(cs["var"][j]) == pytest.approx(v.var(), rel=1e-4)
        assert float(cs["absmax"][j]) == pytest.approx(np.abs(v).max())
        valid = col[~np.isnan(col)]
        for i, e in enumerate(CFG.channel_eps):
            assert float(cs["freq"][i, j]) == (np.abs(valid) > np.float32(e)).mean()


def test_histogram_counts_exact_at_edges() -> None:
    h = LogHistogram(1e-6, 1e4, 200)
    e = h.edges
    up = torch.nextafter(e, torch.full_like(e, math.inf))
    down = torch.nextafter(e, torch.zeros_like(e))
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn(50_000, generator=g) * 10 ** torch.empty(50_000).uniform_(-8, 6, generator=g)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-45, 1e30, 1.0, 10.0, 0.1, 0.01])
    x = torch.cat([e, -up, down, rnd, special])
    a = x.abs()
    n_zero = int((x == 0).sum())
    h.add(a, n_zero=n_zero)
    want = np.bincount(ref_categories(a.numpy(), e.numpy()), minlength=204)
    assert h.counts.tolist() == want.tolist()


def test_histogram_quantiles_within_bin() -> None:
    x = make("heavy", 4000, 8).abs()
    s = SiteStats(8, CFG)
    s.update(x)
    ratio = (CFG.hist_hi / CFG.hist_lo) ** (1 / CFG.hist_bins)
    for q in CFG.quantiles:
        est, true = s.quantile(q), float(np.quantile(x.numpy(), q))
        assert abs(math.log(est / true)) <= math.log(ratio) * 1.01, (q, est, true)
    z = SiteStats(2, CFG)
    z.update(torch.zeros(10, 2))
    assert z.quantile(0.5) == 0.0


def test_topk_mass_matches_numpy() -> None:
    d = 40
    x = make("heavy", 50, d)
    s = SiteStats(d, StatsConfig(sample_rows=8))
    s.update(x)
    rows = np.abs(x[sample_index(50, 8)].numpy().astype(np.float64))
    srt = -np.sort(-rows, axis=1)
    for f, v in s.summary()["topk_mass"].items():
        k = max(1, int(float(f) * d + 0.5))
        assert v == pytest.approx(float((srt[:, :k].sum(1) / srt.sum(1)).mean()), rel=1e-9)
    assert s.topk_tokens == 8


def test_sample_index_even_and_deterministic() -> None:
    assert sample_index(5, 32).tolist() == [0, 1, 2, 3, 4]
    idx = sample_index(1000, 4)
    assert idx.tolist() == [0, 250, 500, 750]


# -- CETT ---------------------------------------------------------------------------------------------------
def ref_cett(h: np.ndarray, w: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    colnorm = np.linalg.norm(w, axis=0)
    cett, spars = [], []
    for row in h:
        n = np.abs(row) * colnorm
        full = np.linalg.norm(w @ row)
        cett.append([np.linalg.norm(w @ (row * (n <= ti))) / full for ti in t])
        spars.append([(n <= ti).mean() for ti in t])
    return np.mean(cett, 0), np.mean(spars, 0)


def test_cett_matches_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    d, out = 48, 20
    w = torch.randn(out, d, generator=g) * torch.rand(d, generator=g)
    h = torch.randn(30, d, generator=g) * torch.rand(d, generator=g) ** 2
    h[0] = 0.0  # ||W h|| = 0: skipped
    cfg = StatsConfig(sample_rows=64, cett_lo=1e-3, cett_hi=10.0, cett_points=13)
    s = SiteStats(d, cfg, down_weight=w)
    s.update(h[:17])
    s.update(h[17:])
    summ = s.summary()["cett"]
    want_c, want_s = ref_cett(h[1:].double().numpy(), w.double().numpy(), cfg.cett_grid().numpy())
    assert summ["tokens"] == 29
    np.testing.assert_allclose(summ["cett"], want_c, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(summ["sparsity"], want_s, rtol=1e-6)
    assert summ["cett"][0] < 0.05 and summ["cett"][-1] == pytest.approx(1.0)  # the grid spans the curve
    # sparsity at a CETT target lies between the sparsities of the bracketing grid points
    sp = summ["sparsity_at_cett"]["0.2"]
    i = int(np.searchsorted(want_c, 0.2))
    assert want_s[i - 1] <= sp <= want_s[i]


def test_cett_sparsity_at() -> None:
    c = CettCurve(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    c.tokens, c.cett_sum, c.sparsity_sum = 1, torch.tensor([0.0, 0.4, 1.0]), torch.tensor([0.2, 0.6, 1.0])
    assert c.sparsity_at(0.2) == pytest.approx(0.4)
    assert c.sparsity_at(1.5) is None


# -- merging ------------------------------------------------------------------------------------------------
def assert_summaries_close(a: dict, b: dict, path: str = "") -> None:
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_summaries_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_summaries_close(u, v, f"{path}[{i}]")
    elif isinstance(a, float):
        # float32 elementwise work in different batch splits: ~1e-6 noise on O(1) values like kurtosis
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5), path
    else:
        assert a == b, path


MERGE_CFG = StatsConfig(sample_rows=1000)  # every row sampled: sampled metrics merge exactly too


@settings(max_examples=10, deadline=None, database=None)
@given(
    kind=st.sampled_from(["normal", "heavy", "relu", "nonfinite"]),
    d=st.integers(1, 9),
    cuts=st.lists(st.integers(0, 60), min_size=1, max_size=4),
)
def test_merge_equals_concatenation(kind: str, d: int, cuts: list[int]) -> None:
    x = make(kind, 60, d, seed=d)
    w = torch.randn(5, d, generator=torch.Generator().manual_seed(2))
    whole = SiteStats(d, MERGE_CFG, down_weight=w)
    whole.update(x)
    bounds = [0, *sorted(cuts), 60]
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        p = SiteStats(d, MERGE_CFG, down_weight=w)
        p.update(x[lo:hi])
        parts.append(p)
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert_summaries_close(merged.summary(per_channel=True), whole.summary(per_channel=True))


@settings(max_examples=25, deadline=None, database=None)
@given(
    n=st.integers(0, 40),
    cut=st.integers(0, 40),
    loc=st.floats(-1e3, 1e3),
    scale=st.floats(1e-3, 1e3),
)
def test_moments_pairwise_merge(n: int, cut: int, loc: float, scale: float) -> None:
    cut = min(cut, n)
    g = torch.Generator().manual_seed(n)
    x = (loc + scale * torch.randn(n, 2, generator=g, dtype=torch.float64)) ** 3
    m = Moments.from_batch(x[:cut]).merge(Moments.from_batch(x[cut:]))
    ref = Moments.from_batch(x)
    assert m.n.tolist() == [n, n]
    for k in ("mean", "m2", "m3", "m4"):
        np.testing.assert_allclose(getattr(m, k), getattr(ref, k), rtol=1e-7, atol=1e-7 * scale**12)


def test_merge_rejects_mismatch() -> None:
    with pytest.raises(ValueError, match="dim or config"):
        SiteStats(4, CFG).merge(SiteStats(5, CFG))
    with pytest.raises(ValueError, match="dim or config"):
        SiteStats(4, CFG).merge(SiteStats(4, StatsConfig(hist_bins=100)))
    with pytest.raises(ValueError, match="CETT"):
        SiteStats(4, CFG, down_weight=torch.ones(2, 4)).merge(SiteStats(4, CFG))


# -- state and config ---------------------------------------------------------------------------------------
def test_state_dict_round_trip(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    w = torch.randn(6, 12)
    s = SiteStats(12, StatsConfig(sample_rows=4), down_weight=w)
    s.update(make("nonfinite", 50, 12))
    path = tmp_path / "shard.safetensors"
    save_file(s.state_dict(), str(path))
    back = SiteStats.from_state_dict(load_file(str(path)), down_weight=w)
    assert back.config == s.config
    assert_summaries_close(back.summary(per_channel=True), s.summary(per_channel=True))
    back.update(make("normal", 5, 12))  # still updatable, CETT included
    assert back.summary()["cett"]["tokens"] == s.summary()["cett"]["tokens"] + 4


def test_config_json_round_trip_and_validation() -> None:
    cfg = StatsConfig(eps_grid=(0.0, 0.05), channel_eps=(0.1,), topk_fracs=(0.25,), sample_rows=7)
    back = StatsConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.channel_eps == (0.0, 0.1)  # 0 is always tracked
    with pytest.raises(ValueError, match="unknown"):
        StatsConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="outside"):
        StatsConfig(eps_grid=(1e5,))
    with pytest.raises(ValueError):
        StatsConfig(topk_fracs=(0.0,))


def test_summary_is_strict_json_and_input_checks() -> None:
    s = SiteStats(3, CFG, down_weight=torch.ones(2, 3))
    json.dumps(s.summary(per_channel=True), allow_nan=False)  # empty: undefined values are None
    s.update(torch.full((4, 3), math.nan))
    out = s.summary(per_channel=True)
    json.dumps(out, allow_nan=False)
    assert out["nan"] == 12 and out["count"] == 0 and out["absmax"] is None and out["density"]["0"] is None
    with pytest.raises(ValueError, match="last dimension"):
        s.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="down_weight"):
        SiteStats(3, CFG, down_weight=torch.ones(2, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    x = make("heavy", 64, 8).to(dtype)
    s = SiteStats(8, CFG)
    s.update(x)
    xn = x.double().numpy()
    out = s.summary()
    assert out["mean"] == pytest.approx(xn.mean(), rel=1e-5)
    assert out["density"]["0.01"] == float((np.abs(xn).astype(np.float32) > np.float32(0.01)).mean())


def test_huge_values_use_float64() -> None:
    x = torch.tensor([[1e12], [-3e12], [5e11], [0.0]])
    s = SiteStats(1, CFG)
    s.update(x)
    ref = ref_moments(x.double().numpy())
    assert s.summary()["kurtosis"] == pytest.approx(ref["kurtosis"], rel=1e-6)
    assert s.summary()["density"]["1"] == 0.75


def test_inference_mode_and_autograd_inputs() -> None:
    from actlab.activations import scratch

    scratch.release()  # buffers first allocated inside inference mode must still work outside it
    with torch.inference_mode():
        s = SiteStats(6, CFG, down_weight=torch.randn(3, 6))
        s.update(torch.randn(5, 6))
    s.update(torch.randn(5, 6, requires_grad=True) * 2)
    with torch.inference_mode():
        s.update(torch.randn(5, 6))
    assert s.summary()["tokens"] == 15


def test_token_stride_uses_every_nth_token() -> None:
    x = make("heavy", 40, 5)
    s = SiteStats(5, StatsConfig(token_stride=3))
    s.update(x.view(4, 10, 5))
    ref = SiteStats(5, CFG)
    ref.update(x[::3])
    assert_summaries_close(s.summary(), ref.summary())
