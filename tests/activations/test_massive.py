"""MassiveTracker: detection on planted spikes, bounds, merging, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actlab.activations.massive import MassiveConfig, MassiveTracker


def resid(b: int = 2, s: int = 16, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, s, d, generator=torch.Generator().manual_seed(seed))


def ref_hits(x: torch.Tensor, cfg: MassiveConfig) -> set[tuple[int, int, int]]:
    a = np.abs(x.double().numpy())
    med = np.sort(a.reshape(-1))[(a.size - 1) // 2]  # lower median, as torch.median
    thr = max(cfg.abs_threshold, cfg.ratio * med)
    return {tuple(int(v) for v in i) for i in np.argwhere(a >= thr)}


def test_planted_spikes_found_with_labels() -> None:
    x = resid()
    x[0, 0, 5] = 3000.0
    x[1, 3, 5] = -1500.0
    x[1, 7, 9] = 150.0  # above abs_threshold but below ratio * median (~0.67 * 1000)
    ids = torch.arange(32).view(2, 16) + 100
    tr = MassiveTracker()
    assert tr.update(x, layer=4, token_ids=ids) == 2
    recs = tr.records()
    assert [(r["layer"], r["channel"], r["position"], r["token_id"], r["value"]) for r in recs] == [
        (4, 5, 0, 100, 3000.0),
        (4, 5, 3, 119, -1500.0),
    ]
    med = float(x.abs().median())
    assert recs[0]["ratio"] == pytest.approx(3000.0 / med)
    assert tr.summary()["counts"] == [{"layer": 4, "channel": 5, "count": 2}]


@settings(max_examples=20, deadline=None, database=None)
@given(
    seed=st.integers(0, 1000),
    abs_t=st.floats(0.5, 5.0),
    ratio=st.floats(1.0, 8.0),
)
def test_hits_match_numpy(seed: int, abs_t: float, ratio: float) -> None:
    x = resid(seed=seed) * torch.rand(32, generator=torch.Generator().manual_seed(seed)) * 3
    cfg = MassiveConfig(abs_threshold=abs_t, ratio=ratio, top_n=10_000)
    tr = MassiveTracker(cfg)
    tr.update(x, layer=0)
    got = sorted((r["position"], r["channel"], r["value"]) for r in tr.records())
    want = sorted((s, c, float(x[b, s, c])) for b, s, c in ref_hits(x, cfg))
    assert got == want
    assert tr.total == len(want)


def test_no_candidates_and_non_finite() -> None:
    tr = MassiveTracker()
    assert tr.update(resid(), layer=0) == 0
    x = resid()
    x[0, 0, 0] = float("nan")
    x[0, 1, 0] = float("inf")
    x[1, 2, 3] = 5000.0
    assert tr.update(x, layer=1) == 1  # NaN and inf are not massive activations
    json.dumps(tr.summary(), allow_nan=False)


def test_zero_median_reports_ratio_none() -> None:
    x = torch.zeros(1, 8, 4)
    x[0, 2, 1] = 200.0
    tr = MassiveTracker()
    assert tr.update(x, layer=2) == 1
    assert tr.records()[0]["ratio"] is None


def test_bounded_top_n_and_counts() -> None:
    tr = MassiveTracker(MassiveConfig(abs_threshold=10, ratio=1, top_n=5))
    for layer in range(3):
        x = torch.zeros(1, 20, 8)
        x[0, :, layer] = torch.arange(20.0) + 100 * layer + 10  # 20 hits in one channel per layer
        tr.update(x, layer=layer)
    recs = tr.records()
    assert len(recs) == 5 and tr.total == 60
    assert [r["value"] for r in recs] == [229.0, 228.0, 227.0, 226.0, 225.0]
    assert tr.counts == {(0, 0): 20, (1, 1): 20, (2, 2): 20}
    assert len(tr.records(limit=2)) == 2


@settings(max_examples=15, deadline=None, database=None)
@given(order=st.permutations(list(range(4))), top_n=st.integers(1, 12))
def test_merge_any_order_equals_single_tracker(order: list[int], top_n: int) -> None:
    cfg = MassiveConfig(abs_threshold=2.0, ratio=1.0, top_n=top_n)
    xs = [resid(seed=i).round() for i in range(4)]  # rounding makes ties likely
    whole = MassiveTracker(cfg)
    parts = []
    for i, x in enumerate(xs):
        whole.update(x, layer=i)
        p = MassiveTracker(cfg)
        p.update(x, layer=i)
        parts.append(p)
    merged = parts[order[0]]
    for i in order[1:]:
        merged = merged.merge(parts[i])
    assert merged.summary() == whole.summary()


def test_state_dict_and_config_round_trip(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    cfg = MassiveConfig(abs_threshold=3.0, ratio=2.0, top_n=7)
    assert MassiveConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        MassiveConfig.from_dict({"bogus": 1})
    tr = MassiveTracker(cfg)
    tr.update(resid() * 2, layer=1, token_ids=torch.arange(32).view(2, 16))
    path = tmp_path / "massive.safetensors"
    save_file(tr.state_dict(), str(path))
    back = MassiveTracker.from_state_dict(load_file(str(path)))
    assert back.summary() == tr.summary()
    empty = MassiveTracker.from_state_dict(MassiveTracker().state_dict())
    assert empty.summary()["records"] == [] and empty.counts == {}


def test_label_tokens_and_input_checks() -> None:
    class Tok:
        def decode(self, ids: list[int]) -> str:
            return f"<{ids[0]}>"

    x = resid()
    x[0, 1, 2] = 999.0
    tr = MassiveTracker()
    tr.update(x, layer=0, token_ids=torch.full((2, 16), 7))
    tr.label_tokens(Tok())
    assert tr.records()[0]["token"] == "<7>"
    with pytest.raises(ValueError, match="token_ids"):
        tr.update(x, layer=0, token_ids=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="batch, seq, d"):
        tr.update(torch.zeros(5), layer=0)
    with pytest.raises(ValueError, match="configs"):
        tr.merge(MassiveTracker(MassiveConfig(top_n=3)))


def test_threshold_between_float32_values_is_exact() -> None:
    # ratio * median a hair above a float32 value rounds down to it in float32; the value must still miss
    x = torch.ones(1, 4, 4)
    x[0, 1, 2] = 200.0
    just_above = 200.0 * (1 + 1e-12)
    assert float(torch.tensor(just_above, dtype=torch.float32)) == 200.0  # the rounding to avoid
    assert MassiveTracker(MassiveConfig(abs_threshold=0.0, ratio=just_above)).update(x, layer=0) == 0
    assert MassiveTracker(MassiveConfig(abs_threshold=0.0, ratio=200.0)).update(x, layer=0) == 1
