"""Mahalanobis scores against an explicit per-sample formula and pytorch-ood's detector."""

from __future__ import annotations

import pytest
import torch

from actlab.functions.ood import OODError
from actlab.functions.ood.mahalanobis import RIDGE, fit_gaussians, mahalanobis_score


def _data(n=60, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    z = torch.randn(n, d, generator=g) + 3 * torch.randn(classes, d, generator=g)[y]
    return z, y


def _brute(z, y, x, normalize=False):
    z, x = z.double(), x.double()
    classes = int(y.max()) + 1
    mus = [z[y == c].mean(dim=0) for c in range(classes)]
    scatter = sum(torch.outer(r - mus[int(c)], r - mus[int(c)]) for r, c in zip(z, y, strict=True))
    cov = (scatter / z.shape[0] if normalize else scatter) + RIDGE * torch.eye(z.shape[1], dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    return torch.tensor([0.5 * min(float((r - m) @ inv @ (r - m)) for m in mus) for r in x], dtype=torch.float64)


@pytest.mark.parametrize("normalize", [False, True])
def test_scores_match_the_formula(normalize):
    z, y = _data()
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(5)) * 4
    got = mahalanobis_score(fit_gaussians(z, y, normalize), x)
    torch.testing.assert_close(got.double(), _brute(z, y, x, normalize), rtol=1e-4, atol=1e-5)


def test_normalized_scores_are_n_times_larger():
    z, y = _data(d=3)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    a = mahalanobis_score(fit_gaussians(z, y), x)
    b = mahalanobis_score(fit_gaussians(z, y, normalize=True), x)
    torch.testing.assert_close(b, a * z.shape[0], rtol=1e-3, atol=1e-4)


def test_without_labels_one_gaussian_is_fitted():
    z, _ = _data()
    g = fit_gaussians(z)
    assert g.mu.shape == (1, 4)
    torch.testing.assert_close(g.mu[0], z.mean(dim=0))


def test_feature_maps_are_averaged_over_space():
    z, y = _data(d=4)
    maps = z[:, :, None, None].expand(-1, -1, 2, 3).contiguous()
    torch.testing.assert_close(mahalanobis_score(fit_gaussians(maps, y), maps),
                               mahalanobis_score(fit_gaussians(z, y), z))


def test_bad_labels_name_the_fix():
    z, y = _data()
    with pytest.raises(OODError, match="one class label per row"):
        fit_gaussians(z, y[:-1])
    with pytest.raises(OODError, match="contiguous"):
        fit_gaussians(z, y * 2)
    with pytest.raises(OODError, match="drop outliers"):
        fit_gaussians(z, y - 1)
    with pytest.raises(OODError, match="fitted on 4"):
        mahalanobis_score(fit_gaussians(z, y), torch.zeros(2, 5))


def test_scores_equal_pytorch_ood(pytorch_ood):
    z, y = _data(n=200, d=6, classes=4, seed=7)
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(8)) * 3
    ref = pytorch_ood.detector.Mahalanobis(None).fit_features(z, y)
    torch.testing.assert_close(mahalanobis_score(fit_gaussians(z, y), x), ref.predict_features(x),
                               rtol=1e-4, atol=1e-6)
