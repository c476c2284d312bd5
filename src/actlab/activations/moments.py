"""Mergeable central moments (count, mean, M2, M3, M4) per channel.

Each batch's central moment sums are computed from the batch itself (centred on the batch mean), then
combined with the running state by the pairwise formulas of Chan et al. and Pébay (Sandia report
SAND2008-6212). Combining instead of accumulating raw power sums is what keeps the result accurate when
the mean is large compared to the spread, and it makes ``merge`` exact up to float error: the moments of
two merged shards equal the moments of the concatenated data.

Non-finite values (NaN, ±inf) are excluded from the moments; the caller counts them separately.

Example:
    >>> import torch
    >>> m = Moments.from_batch(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
    >>> m = m.merge(Moments.from_batch(torch.tensor([[5.0]])))
    >>> round(float(m.mean[0]), 6), round(float(m.m2[0] / m.n[0]), 6)
    (3.0, 2.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actlab.activations import scratch

# Above this magnitude x**4 overflows float32 (3.4e38); such batches are centred in float64 instead.
_FLOAT32_SAFE_ABS = 1e9


@dataclass
class Moments:
    """Count and central moment sums, float64 tensors of one shape (``[d]`` per channel, ``[]`` global).

    ``m2 = sum((x - mean)**2)``, ``m3``, ``m4`` likewise; variance is ``m2 / n`` (population).
    """

    n: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    m3: torch.Tensor
    m4: torch.Tensor

    @classmethod
    def zeros(cls, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu") -> Moments:
        z = [torch.zeros(shape, dtype=torch.float64, device=device) for _ in range(5)]
        return cls(*z)

    @classmethod
    def from_batch(
        cls,
        x: torch.Tensor,
        finite: torch.Tensor | None = None,
        abs_max: float | None = None,
        col_sum: torch.Tensor | None = None,
    ) -> Moments:
        """Per-column moments of ``x`` [N, d].

        ``finite`` is an optional bool mask [N, d] of the elements to include; pass it when ``x`` may
        hold NaN/inf (the fast path without a mask assumes every element is finite). ``abs_max`` (largest
        finite |x|) and ``col_sum`` (``x.sum(0)``, fast path only) save a pass each when already known.

        Elementwise work runs in float32 for float32/16-bit input (float64 for float64 input or for
        magnitudes whose 4th power would overflow float32); every sum is promoted to float64 before the
        re-centring below and before combining.
        """
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        if work == torch.float32 and x.numel():
            if abs_max is None:
                abs_max = float((x if finite is None else torch.where(finite, x, 0)).abs().amax())
            if abs_max > _FLOAT32_SAFE_ABS:
                work = torch.float64
        if x.dtype != work:
            x, col_sum = x.to(work), None
        f64 = torch.float64
        c = scratch.get(1, x.shape, work, x.device)  # [N, d] centred values, then their cubes
        c2 = scratch.get(2, x.shape, work, x.device)  # [N, d] squares, then 4th powers
        if finite is None:
            n = torch.full((x.shape[1],), x.shape[0], dtype=f64, device=x.device)
            mean = (x.sum(0) if col_sum is None else col_sum) / max(x.shape[0], 1)  # [d]
            torch.sub(x, mean, out=c)
        else:
            n = finite.sum(0).to(f64)
            mean = torch.where(finite, x, 0).sum(0) / n.clamp(min=1).to(work)
            torch.where(finite, x - mean, torch.zeros((), dtype=work, device=x.device), out=c)
        s1 = c.sum(0).to(f64)  # ~0; not exactly, since `mean` was rounded to `work` precision
        torch.mul(c, c, out=c2)
        s2 = c2.sum(0).to(f64)
        c.mul_(c2)
        s3 = c.sum(0).to(f64)
        c2.square_()
        s4 = c2.sum(0).to(f64)
        # re-centre the sums on the exact mean (mean + r) in float64: a float32 mean of data like
        # 1e4 + 0.01 * noise is off by a good part of the spread, which would bias m2..m4
        r = s1 / n.clamp(min=1)
        m2 = s2 - n * r**2
        m3 = s3 - 3 * r * s2 + 2 * n * r**3
        m4 = s4 - 4 * r * s3 + 6 * r**2 * s2 - 3 * n * r**4
        return cls(n, mean.to(f64) + r, m2, m3, m4)

    def merge(self, other: Moments) -> Moments:
        """Pairwise (Chan/Pébay) combination; returns a new object. Shapes must match."""
        na, nb = self.n, other.n
        n = na + nb
        safe_n = n.clamp(min=1)  # both empty -> everything stays 0
        delta = other.mean - self.mean
        d_n = delta / safe_n
        mean = self.mean + d_n * nb
        nab = na * nb
        m2 = self.m2 + other.m2 + delta * d_n * nab
        m3 = (
            self.m3
            + other.m3
            + delta * d_n * d_n * nab * (na - nb)
            + 3.0 * d_n * (na * other.m2 - nb * self.m2)
        )
        m4 = (
            self.m4
            + other.m4
            + delta * d_n**3 * nab * (na * na - nab + nb * nb)
            + 6.0 * d_n * d_n * (na * na * other.m2 + nb * nb * self.m2)
            + 4.0 * d_n * (na * other.m3 - nb * self.m3)
        )
        return Moments(n, mean, m2, m3, m4)

    def reduce(self) -> Moments:
        """Combine all channels into one group: the moments of every element together, shape ``[]``.

        Shifts each channel's sums to the common mean (exact), which equals merging them pairwise.
        """
        n = self.n.sum()
        mean = (self.n * self.mean).sum() / n.clamp(min=1)
        dl = torch.where(self.n > 0, self.mean - mean, 0)  # [d] shift of each channel's centre
        m2 = (self.m2 + self.n * dl**2).sum()
        m3 = (self.m3 + 3 * dl * self.m2 + self.n * dl**3).sum()
        m4 = (self.m4 + 4 * dl * self.m3 + 6 * dl**2 * self.m2 + self.n * dl**4).sum()
        return Moments(n, mean, m2, m3, m4)

    def var(self) -> torch.Tensor:
        """Population variance ``m2 / n`` (NaN where n == 0)."""
        return self.m2 / self.n

    def skew(self) -> torch.Tensor:
        """Sample skewness ``sqrt(n) * m3 / m2**1.5`` (NaN where undefined)."""
        return self.n.sqrt() * self.m3 / self.m2**1.5

    def kurtosis(self) -> torch.Tensor:
        """Excess kurtosis ``n * m4 / m2**2 - 3`` (0 for a normal distribution; NaN where undefined)."""
        return self.n * self.m4 / self.m2**2 - 3.0

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}{k}": getattr(self, k).clone() for k in ("n", "mean", "m2", "m3", "m4")}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], prefix: str) -> Moments:
        return cls(
            *(state[f"{prefix}{k}"].to(torch.float64).clone() for k in ("n", "mean", "m2", "m3", "m4"))
        )
