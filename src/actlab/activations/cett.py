"""CETT curve of an MLP down-projection input (Luo et al., "Sparsing Law", 2024).

For the input ``h`` [d] of ``W_down`` [out, d], neuron ``i`` writes ``h_i * W_down[:, i]`` whose norm is
``n_i = |h_i| * c_i`` with ``c_i = ||W_down[:, i]||_2``. Dropping every neuron with ``n_i <= t`` leaves the
relative error

    CETT(t) = ||W_down (h * 1[n <= t])||_2 / ||W_down h||_2

and the sparsity ``mean_i 1[n_i <= t]``. Both rise with ``t``; the paper fixes CETT (e.g. 0.2) and reads off
the sparsity. To stay mergeable the curve is kept on a fixed grid of *absolute* ``t`` (a per-token relative
grid cannot be summed across batches): per grid point, the sum over tokens of CETT and of sparsity, and
the token count. Tokens with ``||W_down h|| = 0`` or a non-finite entry are skipped.

Cost: one ``[rows * G', d] x [d, out]`` matmul per update, ``G'`` being the grid points where some
token is neither fully kept nor fully dropped (the others are exactly 0 or 1) -- so callers pass a few
sampled rows, not the whole batch.

Example:
    >>> import torch
    >>> w = torch.eye(2)                       # out=2, d=2: columns have norm 1
    >>> acc = CettCurve(torch.tensor([0.5, 2.0], dtype=torch.float64), w)
    >>> acc.update(torch.tensor([[1.0, 0.1]]))  # n = [1.0, 0.1]
    >>> [round(v, 4) for v in acc.mean_cett().tolist()], acc.mean_sparsity().tolist()
    ([0.0995, 1.0], [0.5, 1.0])
"""

from __future__ import annotations

import torch


class CettCurve:
    """Sums over tokens of CETT(t) and sparsity(t) on a fixed threshold grid ``t`` [G] (float64)."""

    def __init__(self, thresholds: torch.Tensor, down_weight: torch.Tensor | None = None) -> None:
        self.t = thresholds.to(torch.float64).cpu()
        if not bool((self.t[1:] > self.t[:-1]).all()):
            raise ValueError("CETT thresholds must be strictly increasing")
        self.cett_sum = torch.zeros_like(self.t)
        self.sparsity_sum = torch.zeros_like(self.t)
        self.tokens = 0
        self.weight: torch.Tensor | None = None
        self.colnorm: torch.Tensor | None = None
        if down_weight is not None:
            self.set_weight(down_weight)

    def set_weight(self, down_weight: torch.Tensor) -> None:
        """Attach ``W_down`` [out, d] (kept by reference in float32; never saved in the state)."""
        w = down_weight.detach()
        if w.dim() != 2:
            raise ValueError(f"down_weight must be [out, d], got shape {tuple(w.shape)}")
        self.weight = w if w.dtype == torch.float32 else w.float()
        self.colnorm = self.weight.norm(dim=0)  # [d]

    def update(self, h: torch.Tensor) -> None:
        """Add tokens ``h`` [m, d] (rows of the down-projection input)."""
        if self.weight is None or self.colnorm is None:
            raise RuntimeError("CettCurve.update needs down_weight (pass it or call set_weight)")
        w = self.weight
        h = h.to(device=w.device, dtype=torch.float32)
        if h.shape[-1] != w.shape[1]:
            raise ValueError(f"h has {h.shape[-1]} channels but down_weight has {w.shape[1]} columns")
        h = h[torch.isfinite(h).all(1)]
        full = (h @ w.T).norm(dim=1)  # [m]
        h = h[full > 0]
        full = full[full > 0]
        m, d = h.shape
        if m == 0:
            return
        n = h.abs() * self.colnorm  # [m, d] per-neuron output norm
        t = self.t.to(device=w.device, dtype=torch.float32)  # [G]
        # t below a token's smallest n drops nothing (CETT 0), t at/above its largest drops all (CETT 1);
        # only grid points strictly between, for some token, need the masked matmul
        none = t[None, :] < n.amin(1, keepdim=True)  # [m, G]
        every = t[None, :] >= n.amax(1, keepdim=True)  # [m, G]
        cett = every.to(torch.float64)
        dropped = cett * d  # [m, G] number of neurons with n <= t
        partial = (~none & ~every).any(0).nonzero().squeeze(1)  # [G']
        if partial.numel():
            keep = n.unsqueeze(0) <= t[partial].view(-1, 1, 1)  # [G', m, d]: dropped neurons
            dropped[:, partial] = keep.sum(-1).T.to(torch.float64)
            masked = torch.where(keep, h.unsqueeze(0), 0.0).view(-1, d)  # [G' * m, d]
            part = (masked @ w.T).norm(dim=1).view(-1, m)  # [G', m]
            cett[:, partial] = (part / full).T.to(torch.float64)
        self.cett_sum = self.cett_sum + cett.sum(0).cpu()  # out of place: may be an inference tensor
        self.sparsity_sum = self.sparsity_sum + (dropped / d).sum(0).cpu()
        self.tokens += m

    def mean_cett(self) -> torch.Tensor:
        """Average CETT per grid point [G] (NaN before any token)."""
        return self.cett_sum / self.tokens if self.tokens else torch.full_like(self.t, float("nan"))

    def mean_sparsity(self) -> torch.Tensor:
        """Average fraction of neurons with ``n_i <= t`` per grid point [G]."""
        return self.sparsity_sum / self.tokens if self.tokens else torch.full_like(self.t, float("nan"))

    def sparsity_at(self, target: float) -> float | None:
        """Sparsity where the average CETT curve crosses ``target`` (linear between grid points).

        None when the curve never reaches ``target`` inside the grid or no token was seen.
        """
        if not self.tokens:
            return None
        c, s = self.mean_cett().tolist(), self.mean_sparsity().tolist()
        if target < c[0]:
            return None
        for i in range(1, len(c)):
            if c[i] >= target:
                if c[i] == c[i - 1]:
                    return s[i - 1]
                f = (target - c[i - 1]) / (c[i] - c[i - 1])
                return s[i - 1] + f * (s[i] - s[i - 1])
        return None

    def merge(self, other: CettCurve) -> CettCurve:
        """New curve with both sums (same grid required); keeps this curve's weight."""
        if self.t.shape != other.t.shape or not torch.equal(self.t, other.t):
            raise ValueError("cannot merge CETT curves on different threshold grids")
        out = CettCurve(self.t)
        out.weight, out.colnorm = self.weight, self.colnorm
        out.cett_sum = self.cett_sum + other.cett_sum
        out.sparsity_sum = self.sparsity_sum + other.sparsity_sum
        out.tokens = self.tokens + other.tokens
        return out

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}t": self.t.clone(),
            f"{prefix}cett_sum": self.cett_sum.clone(),
            f"{prefix}sparsity_sum": self.sparsity_sum.clone(),
            f"{prefix}tokens": torch.tensor(self.tokens, dtype=torch.int64),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, torch.Tensor], prefix: str, down_weight: torch.Tensor | None = None
    ) -> CettCurve:
        out = cls(state[f"{prefix}t"], down_weight)
        out.cett_sum = state[f"{prefix}cett_sum"].to(torch.float64).clone()
        out.sparsity_sum = state[f"{prefix}sparsity_sum"].to(torch.float64).clone()
        out.tokens = int(state[f"{prefix}tokens"])
        return out
