"""ReAct, ASH-p/b/s and SCALE against per-sample brute force, and against pytorch-ood's functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actlab.errors import user_error_types
from actlab.functions.ood import OODError
from actlab.functions.ood.shaping import ash_b, ash_p, ash_s, kept_count, percentile, react, scale


def _feats(shape=(6, 10), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).relu() + 0.01 * torch.rand(*shape, generator=g)


def _brute(x: torch.Tensor, p: float, variant: str) -> torch.Tensor:
    """Each sample on its own, by sorting a Python list: the kept are the k largest values."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        vals = x[b].reshape(-1).tolist()
        n = len(vals)
        k = n - int(np.round(n * p))
        kept = sorted(range(n), key=lambda i: vals[i], reverse=True)[:k]
        s1, s2 = sum(vals), sum(vals[i] for i in kept)
        row = [0.0] * n
        for i in kept:
            row[i] = {"p": vals[i], "b": s1 / k, "s": vals[i] * np.exp(s1 / s2)}.get(variant, 0.0)
        if variant == "scale":
            row = [v * np.exp(s1 / s2) for v in vals]
        out[b] = torch.tensor(row).reshape(x[b].shape)
    return out


@pytest.mark.parametrize("p", [0.0, 0.5, 0.65, 0.9])
@pytest.mark.parametrize(("fn", "variant"), [(ash_p, "p"), (ash_b, "b"), (ash_s, "s"), (scale, "scale")])
def test_shapings_match_brute_force(fn, variant, p):
    x = _feats()
    torch.testing.assert_close(fn(x, p), _brute(x, p, variant), rtol=1e-5, atol=1e-6)


def test_shapings_flatten_every_dimension_after_the_batch():
    x = _feats((3, 2, 4, 5))
    got = ash_s(x, 0.7)
    assert got.shape == x.shape
    torch.testing.assert_close(got.reshape(3, -1), ash_s(x.reshape(3, -1), 0.7))
    # the pruned count is per sample over all 40 entries: round(40 * 0.7) = 28 zeros
    assert ((got.reshape(3, -1) == 0).sum(dim=1) == 28).all()


def test_ash_b_fills_with_the_whole_sum_over_the_kept_count():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0]])
    # k = 5 - round(2.5) = 5 - 2 = 3 (round half to even); fill = 20 / 3, not the kept mean 17 / 3
    torch.testing.assert_close(ash_b(x, 0.5), torch.tensor([[0.0, 0.0, 20 / 3, 20 / 3, 20 / 3]]))


def test_kept_count_rounds_half_to_even_and_refuses_keeping_nothing():
    assert kept_count(10, 0.65) == 10 - 6  # 6.5 -> 6
    assert kept_count(10, 0.75) == 10 - 8  # 7.5 -> 8
    with pytest.raises(OODError, match="keeps none"):
        kept_count(10, 1.0)
    with pytest.raises(OODError, match=r"\[0, 1\]"):
        ash_p(_feats(), 1.5)
    assert issubclass(OODError, user_error_types())


def test_react_clips_from_above_only():
    x = torch.tensor([[-2.0, 0.5, 3.0]])
    torch.testing.assert_close(react(x, 1.0), torch.tensor([[-2.0, 0.5, 1.0]]))


@pytest.mark.parametrize("q", [0.0, 0.3, 0.9, 0.99, 1.0])
def test_percentile_is_numpys_linear_percentile(q):
    x = torch.randn(7, 13, generator=torch.Generator().manual_seed(1))
    assert percentile(x, q) == pytest.approx(float(np.percentile(x.numpy(), q * 100)), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("p", [0.5, 0.65, 0.9])
def test_shapings_equal_pytorch_ood(pytorch_ood, p):
    ash = pytorch_ood.detector.ash
    sc = pytorch_ood.detector.scale
    x = _feats((5, 12, 2, 3), seed=3)
    for ours, theirs in [(ash_p, ash.ash_p), (ash_b, ash.ash_b), (ash_s, ash.ash_s), (scale, sc.scale)]:
        torch.testing.assert_close(ours(x, p), theirs(x, p), rtol=1e-6, atol=1e-6)
