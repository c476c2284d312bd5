"""Class-conditional Gaussians with one shared covariance, scored by the Mahalanobis distance.

As pytorch-ood 0.4.0 (and Lee et al. 2018): per class ``c`` the mean ``mu_c`` of its features, one covariance
``S`` from the features centred on their class means, and the outlier score

    score(x) = 1/2 * min_c (x - mu_c)^T S^-1 (x - mu_c)

Features ``[B, C, ...]`` are averaged over the dimensions after ``C`` first (pooled feature maps).
pytorch-ood's ``S`` is the *sum* of the centred outer products (not divided by ``N``) plus ``1e-6 I``; that
is the default here, so scores equal its scores. ``normalize=True`` divides by ``N`` first (the paper's
``EmpiricalCovariance``): the scores are then ``N`` times larger and rank the same, up to the ridge.
Without labels every feature is one class, which is what a language model's features offer.

Example:
    >>> z = torch.randn(100, 4); y = torch.arange(100) % 2
    >>> g = fit_gaussians(z, y)
    >>> mahalanobis_score(g, z).shape
    torch.Size([100])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actlab.functions.ood.errors import OODError

__all__ = ["Gaussians", "fit_gaussians", "mahalanobis_score"]

RIDGE = 1e-6


@dataclass
class Gaussians:
    """Fitted class means ``[n_classes, D]`` and the shared precision matrix ``[D, D]``."""

    mu: torch.Tensor
    precision: torch.Tensor


def _pooled(z: torch.Tensor) -> torch.Tensor:
    if z.dim() < 2:
        raise OODError(f"features must be [batch, channels, ...], got shape {tuple(z.shape)}")
    return z.reshape(z.shape[0], z.shape[1], -1).mean(dim=2)  # [B, C]


def fit_gaussians(z: torch.Tensor, labels: torch.Tensor | None = None, normalize: bool = False) -> Gaussians:
    """Class means and shared precision of in-distribution features ``z`` with class ``labels``.

    Args:
        z: features ``[N, D]`` (or ``[N, C, ...]``, pooled to ``[N, C]``).
        labels: class per row, contiguous ``0..C-1`` with every class present; ``None`` = one class.
        normalize: divide the scatter matrix by ``N`` (the paper's covariance) instead of pytorch-ood's sum.

    Raises:
        OODError: labels of another length, negative, or with a class missing.
    """
    z = _pooled(z.detach()).double()
    if labels is None:
        labels = torch.zeros(z.shape[0], dtype=torch.long)
    labels = labels.reshape(-1).to(z.device).long()
    if labels.numel() != z.shape[0]:
        raise OODError(f"{labels.numel()} labels for {z.shape[0]} feature rows; pass one class label per row")
    if labels.numel() == 0 or labels.min() < 0:
        raise OODError("labels must be class indices >= 0 of in-distribution samples (drop outliers first)")
    n_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=n_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).reshape(-1).tolist()
        raise OODError(f"classes {missing[:8]} have no sample; relabel to contiguous 0..C-1")
    mu = torch.zeros(n_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    mu /= counts[:, None]
    centred = z - mu[labels]  # [N, D]
    cov = centred.T @ centred
    if normalize:
        cov /= z.shape[0]
    cov += RIDGE * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    return Gaussians(mu.float(), torch.linalg.inv(cov).float())


def mahalanobis_score(g: Gaussians, z: torch.Tensor) -> torch.Tensor:
    """Half the squared Mahalanobis distance of each row of ``z`` to its nearest class mean, ``[B]``."""
    z = _pooled(z.detach()).to(g.mu)
    if z.shape[1] != g.mu.shape[1]:
        raise OODError(f"features have {z.shape[1]} channels, the detector was fitted on {g.mu.shape[1]}")
    # one class at a time: [B, D] of memory instead of [B, n_classes, D]
    best = None
    for mu in g.mu:
        d = z - mu  # [B, D]
        m = ((d @ g.precision) * d).sum(dim=1)
        best = m if best is None else torch.minimum(best, m)
    return 0.5 * best
