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

The basis comes from the second moment ``sum x^T x`` over every calibration token (accumulated by
``collect(..., moment_sites=...)``), not from the bounded row sample: that has fewer rows than a wide
site has channels, and a basis fitted on it has exact-zero directions the real inputs do not.

Example:
    >>> x = torch.randn(256, 8) * torch.tensor([8., 4, 2, 1, .5, .25, .1, .05])
    >>> q = pca_rotation(second_moment(x))
    >>> torch.allclose(q @ q.T, torch.eye(8), atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import nn


def second_moment(rows: torch.Tensor) -> torch.Tensor:
    """``rows^T rows`` in float64 (``rows`` [n, d] -> [d, d])."""
    x = rows.double()
    return x.T @ x


def pca_rotation(moment: torch.Tensor) -> torch.Tensor:
    """Orthogonal ``[d, d]`` float32 whose columns are the eigenvectors of ``moment`` (largest first)."""
    return torch.linalg.eigh(moment.double())[1].flip(1).float().contiguous()


def grouped_rotation(moment: torch.Tensor, head_dim: int, heads_per_group: int) -> torch.Tensor:
    """Block-diagonal rotation of an attention output: one PCA per kv group, pooled over its query heads."""
    n_heads = moment.shape[0] // head_dim
    blocks = []
    for g in range(n_heads // heads_per_group):
        pooled = sum(
            moment[h * head_dim : (h + 1) * head_dim, h * head_dim : (h + 1) * head_dim]
            for h in range(g * heads_per_group, (g + 1) * heads_per_group)
        )
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


def site_rotation(model: nn.Module, site_kind: str, moment: torch.Tensor) -> torch.Tensor:
    """The rotation for one input site from its second moment ``[width, width]`` over calibration tokens."""
    if site_kind == "attn.o_in":
        shape = _attention_shape(model, moment.shape[0])
        if shape is not None:
            return grouped_rotation(moment, *shape)
    return pca_rotation(moment)


def rotation_params(q: torch.Tensor) -> int:
    """Weights a token reads to apply ``q``: its non-zeros (a block-diagonal rotation costs its blocks)."""
    return int(torch.count_nonzero(q))
