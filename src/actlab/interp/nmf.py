"""Semi-NMF of a site's activations: the decomposition baseline beside sparse autoencoders.

Semi-nonnegative matrix factorisation (Ding, Li & Jordan, "Convex and Semi-Nonnegative Matrix
Factorizations", TPAMI 2010): for activations ``X [n_tokens, d]`` (any sign, e.g. SiLU-gated MLP neurons)

    X ≈ G Fᵀ,   G [n_tokens, r] ≥ 0 (how much of each component a token holds),  F [d, r] free (components)

minimised in squared error by alternating the closed-form ``F = Xᵀ G (GᵀG)⁻¹`` with Ding's multiplicative
update ``G ← G ⊙ sqrt(([XF]⁺ + G[FᵀF]⁻) / ([XF]⁻ + G[FᵀF]⁺))`` (``A⁺ = (|A|+A)/2``, ``A⁻ = (|A|−A)/2``),
which keeps ``G`` nonnegative and never increases the error. (Ding writes X as [d, n] and X ≈ F Gᵀ: the
same factorisation, transposed.)

Example:
    >>> X = torch.rand(500, 4) @ torch.randn(4, 32)
    >>> result = semi_nmf(X, rank=4, iters=300)
    >>> result.fvu < 0.05
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

_EPS = 1e-12


class NMFError(ValueError):
    """Semi-NMF cannot run as asked (bad rank, too few tokens); the message names the fix."""


@dataclass
class SemiNMFResult:
    """``components`` F ``[d, rank]``, ``codes`` G ``[n, rank]`` ≥ 0 of the fitted tokens, their ``fvu``
    (Σ‖X − G Fᵀ‖² / Σ‖X − mean‖²) and the FVU after each logged iteration."""

    components: torch.Tensor
    codes: torch.Tensor
    fvu: float
    iters: int
    history: list[float] = field(default_factory=list, repr=False)

    def transform(self, x: torch.Tensor, iters: int = 300) -> torch.Tensor:
        """Nonnegative codes ``[m, rank]`` of new activations ``x [m, d]`` with the components held fixed."""
        return nonneg_codes(x, self.components, iters=iters)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.components.shape[1], "d": self.components.shape[0], "tokens": self.codes.shape[0],
                "fvu": self.fvu, "iters": self.iters}


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained, Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the rows of ``x``."""
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(_EPS))


def _pos(a: torch.Tensor) -> torch.Tensor:
    return (a.abs() + a) / 2


def _neg(a: torch.Tensor) -> torch.Tensor:
    return (a.abs() - a) / 2


def _update_codes(x: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    xf, ff = x @ f, f.T @ f  # [n, r], [r, r]
    num = _pos(xf) + g @ _neg(ff)
    den = _neg(xf) + g @ _pos(ff)
    return g * torch.sqrt(num / den.clamp_min(_EPS))


def _solve_components(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    gtg = g.T @ g  # [r, r]
    ridge = 1e-9 * gtg.diagonal().mean().clamp_min(_EPS)  # G may lose a column to zeros: keep GᵀG invertible
    return torch.linalg.solve(gtg + ridge * torch.eye(g.shape[1], dtype=g.dtype), g.T @ x).T  # [d, r]


def nonneg_codes(x: torch.Tensor, components: torch.Tensor, iters: int = 300) -> torch.Tensor:
    """Nonnegative least-squares codes ``G ≥ 0`` with ``x ≈ G Fᵀ`` for fixed ``F = components``."""
    x64, f = x.double(), components.double()
    ff = f.T @ f
    ridge = 1e-9 * ff.diagonal().mean().clamp_min(_EPS)
    g_ls = torch.linalg.solve(ff + ridge * torch.eye(f.shape[1], dtype=f.dtype), f.T @ x64.T).T  # unconstrained LS
    # start from the least-squares codes projected onto g >= 0 (the updates converge slowly from far away), kept
    # positive because a multiplicative update never moves an entry off zero
    g = g_ls.clamp_min(0) + 1e-3 * g_ls.abs().mean()
    for _ in range(iters):
        g = _update_codes(x64, f, g)
    return g.to(x.dtype)


def semi_nmf(x: torch.Tensor, rank: int, iters: int = 200, seed: int = 0, tol: float = 1e-6,
             log_every: int = 10) -> SemiNMFResult:
    """Fit ``x [n, d] ≈ G Fᵀ`` with ``G ≥ 0`` of rank ``rank`` (see the module docstring).

    ``G`` starts as Ding et al. suggest, from a clustering: k-means (a few Lloyd steps from random tokens)
    gives cluster indicators, plus 0.2 everywhere so no entry starts at a fixed point of the update. Stops
    after ``iters`` iterations or when the FVU improves by less than ``tol`` over ``log_every`` of them.

    Raises:
        NMFError: rank < 1, or fewer tokens than the rank.
    """
    if x.dim() != 2:
        raise NMFError(f"semi-NMF needs a [tokens, d] matrix, got shape {tuple(x.shape)}")
    n, _ = x.shape
    if not 1 <= rank <= n:
        raise NMFError(f"rank must be between 1 and the number of tokens ({n}), got {rank}")
    x64 = x.double()
    gen = torch.Generator().manual_seed(seed)
    centers = x64[torch.randperm(n, generator=gen)[:rank]]  # [r, d]
    for _ in range(10):  # Lloyd's k-means
        assign = torch.cdist(x64, centers).argmin(1)
        for j in range(rank):
            members = x64[assign == j]
            if members.shape[0]:
                centers[j] = members.mean(0)
    g = torch.nn.functional.one_hot(assign, rank).double() + 0.2  # [n, r]
    history: list[float] = []
    f = _solve_components(x64, g)
    done = 0
    for it in range(1, iters + 1):
        g = _update_codes(x64, f, g)
        f = _solve_components(x64, g)
        done = it
        if it % log_every == 0 or it == iters:
            history.append(fvu(x64, g @ f.T))
            if len(history) > 1 and history[-2] - history[-1] < tol:
                break
    return SemiNMFResult(components=f.to(x.dtype), codes=g.to(x.dtype), fvu=fvu(x64, g @ f.T), iters=done,
                         history=history)


def sample_tokens(chunks: Iterable[torch.Tensor], max_tokens: int, seed: int = 0) -> torch.Tensor:
    """A uniform sample of at most ``max_tokens`` rows from a stream of ``[n, d]`` chunks (reservoir
    sampling: memory stays ``max_tokens × d`` however long the stream).

    Example:
        >>> sample_tokens(site_activations(model, "layers.3.mlp.down_in", windows), 20_000)  # doctest: +SKIP
    """
    if max_tokens < 1:
        raise NMFError(f"max_tokens must be positive (got {max_tokens})")
    gen = torch.Generator().manual_seed(seed)
    keep: torch.Tensor | None = None
    seen = 0
    for chunk in chunks:
        chunk = chunk.reshape(-1, chunk.shape[-1]).float()
        if keep is None:
            keep = torch.empty(max_tokens, chunk.shape[1])
        for row in chunk.split(4096):
            m = row.shape[0]
            idx = torch.arange(seen, seen + m)
            fill = idx < max_tokens
            keep[idx[fill]] = row[fill]
            # Algorithm R, vectorised: row i (0-based stream index t) replaces slot j ~ U[0, t] if j < max_tokens
            rest = ~fill
            if bool(rest.any()):
                j = (torch.rand(int(rest.sum()), generator=gen) * (idx[rest] + 1)).long()
                hit = j < max_tokens
                keep[j[hit]] = row[rest][hit]
            seen += m
    if keep is None:
        raise NMFError("no tokens to sample; pass more windows")
    return keep[: min(seen, max_tokens)]


def site_semi_nmf(model: Any, site: str, windows: torch.Tensor, rank: int, max_tokens: int = 8192,
                  heldout: float = 0.25, iters: int = 200, exclude_first: int = 1, batch_size: int = 8,
                  seed: int = 0) -> dict[str, Any]:
    """Semi-NMF of ``site``'s activations (e.g. ``layers.3.mlp.down_in``) over a bounded uniform sample of the
    tokens of ``windows``: fitted on ``1 - heldout`` of the sample, FVU reported on both parts.

    Example:
        >>> site_semi_nmf(model, "layers.15.mlp.down_in", windows, rank=64)["fvu_heldout"]   # doctest: +SKIP
    """
    from actlab.interp.sae_train import site_activations  # the same streaming reader as the SAE trainer

    if not 0 < heldout < 1:
        raise NMFError(f"heldout must be a fraction in (0, 1), got {heldout}")
    x = sample_tokens(site_activations(model, site, windows, batch_size, exclude_first), max_tokens, seed)
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))]
    n_fit = max(rank, int(x.shape[0] * (1 - heldout)))
    if n_fit >= x.shape[0]:
        raise NMFError(f"{x.shape[0]} tokens are too few for rank {rank} with a held-out part; pass more windows")
    result = semi_nmf(x[:n_fit], rank, iters=iters, seed=seed)
    test = x[n_fit:]
    return {"site": site, "rank": rank, "tokens_fit": n_fit, "tokens_heldout": test.shape[0], "fvu_fit": result.fvu,
            "fvu_heldout": fvu(test, result.transform(test) @ result.components.T), "iters": result.iters,
            "result": result}
