"""Principal-component rotations of masked inputs (LaRoSA-style rotated sparsity).

Magnitude masking of a post-norm input drops about a tenth of its energy at 50% because the input is close
to isotropic in its own channel basis. In the basis of its principal components (``z = x Q``, ``Q`` the
eigenvectors of ``E[x x^T]`` on calibration tokens) the energy sits in few coordinates, so the same mask
sparsity costs far less output error; the consumers then read ``mask(z) Q^T``, or equivalently use
``W Q`` on ``mask(z)``.

``attn.o_in`` gets one rotation per kv group, pooled over the group's query heads: attention is linear
in V, so that rotation could be folded into ``v_proj`` and ``o_proj`` for free; it is block-diagonal
(``width x head_dim`` weights, a ninth of ``o_proj`` on SmolLM2) and, until it is folded, counted like
every other input's dense ``x Q`` product by :func:`rotation_params`.

Example:
    >>> x = torch.randn(256, 8) * torch.tensor([8., 4, 2, 1, .5, .25, .1, .05])
    >>> q = pca_rotation(x)
    >>> torch.allclose(q @ q.T, torch.eye(8), atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import nn


def pca_rotation(rows: torch.Tensor) -> torch.Tensor:
    """Orthogonal ``[d, d]`` float32 whose columns are the eigenvectors of ``rows^T rows`` (``rows`` [n, d])."""
    x = rows.double()
    return torch.linalg.eigh(x.T @ x)[1].flip(1).float().contiguous()


def grouped_rotation(rows: torch.Tensor, head_dim: int, heads_per_group: int) -> torch.Tensor:
    """Block-diagonal rotation of an attention output: one PCA per kv group, pooled over its query heads."""
    n_heads = rows.shape[1] // head_dim
    heads = rows.reshape(rows.shape[0], n_heads, head_dim)
    blocks = []
    for g in range(n_heads // heads_per_group):
        pooled = heads[:, g * heads_per_group : (g + 1) * heads_per_group].reshape(-1, head_dim)
        blocks += [pca_rotation(pooled)] * heads_per_group
    return torch.block_diag(*blocks)


def _attention_shape(model: nn.Module, width: int) -> tuple[int, int] | None:
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", None)
    if not heads or width % heads:
        return None
    head_dim = getattr(cfg, "head_dim", None) or width // heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if head_dim * heads != width or heads % kv:
        return None
    return head_dim, heads // kv


def site_rotation(model: nn.Module, site_kind: str, rows: torch.Tensor) -> torch.Tensor:
    """The rotation for one input site from its calibration rows ``[n, width]`` (signed)."""
    if site_kind == "attn.o_in":
        shape = _attention_shape(model, rows.shape[1])
        if shape is not None:
            return grouped_rotation(rows, *shape)
    return pca_rotation(rows)


def rotation_params(q: torch.Tensor) -> int:
    """Weights a token reads to apply ``q``: its non-zeros (a block-diagonal rotation costs its blocks)."""
    return int(torch.count_nonzero(q))
