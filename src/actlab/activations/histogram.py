"""Histogram of |x| on fixed log-spaced edges, exact at every edge, mergeable by addition.

Edges ``E_0 = lo < E_1 < ... < E_B = hi`` are log-spaced and stored as float32; bins are right-closed,
``E_k < |x| <= E_k+1``, so "how many |x| exceed E_k" is read off exactly by a suffix sum. That is what
makes densities at thresholds snapped to an edge exact rather than interpolated.

Counts layout, ``B + 4`` int64 categories:

    [zero, underflow (0 < |x| <= lo), bin_0 ... bin_{B-1}, overflow (|x| > hi, +inf included), nan]

Binning is arithmetic (``trunc(log2|x| * scale + offset)``, a few vectorised passes) rather than a
binary search (``torch.bucketize`` is ~10x slower on CPU). float32 ``log2`` is off by a few ulps, so
elements whose position lies within a small tolerance of an edge are re-binned exactly with
``searchsorted`` against the float32 edges (typically < 0.2 % of elements). Values are binned as float32:
float64 input is rounded to float32 first.

Example:
    >>> import torch
    >>> h = LogHistogram(1e-6, 1e4, 200)
    >>> x = torch.tensor([0.0, 0.005, 0.02, 5.0, float("inf")])
    >>> h.add(x.abs(), n_zero=1)
    >>> h.count_above(h.snap(0.01)[0]), h.edges[h.snap(0.01)[0]].item() == torch.tensor(0.01).item()
    (3, True)
"""

from __future__ import annotations

import math

import torch

from actlab.activations import scratch


class LogHistogram:
    """Counts of |x| in the categories described in the module docstring."""

    def __init__(self, lo: float, hi: float, bins: int, device: torch.device | str = "cpu") -> None:
        if not (0 < lo < hi < math.inf) or bins < 1:
            raise ValueError(f"histogram needs 0 < lo < hi < inf and bins >= 1, got {lo=}, {hi=}, {bins=}")
        self.lo, self.hi, self.bins = float(lo), float(hi), int(bins)
        step = math.log10(hi / lo) / bins  # decades per bin
        k = torch.arange(bins + 1, dtype=torch.float64)
        self.edges = (10.0 ** (math.log10(lo) + k * step)).to(torch.float32)  # [B+1]
        # position p = log2|x| * scale2 + offset puts edge E_k at p = k + 2, so trunc(p) is the category
        self._scale = 1.0 / step  # bins per decade
        self._scale2 = self._scale * math.log10(2.0)  # bins per octave
        offset = 2.0 - math.log10(lo) / step
        # float32 error of p grows with |p| and |log10 x| * scale; 16x a one-ulp bound is ample
        span = abs(offset) + self._scale * max(abs(math.log10(lo)), abs(math.log10(hi))) + bins + 2
        self._tol = 16 * span * 2.0**-23
        self._offset = torch.tensor(offset + self._tol, dtype=torch.float32)
        self._floor = float(torch.tensor(10.0 ** (math.log10(lo) - 0.5 * step), dtype=torch.float32))
        self.counts = torch.zeros(bins + 4, dtype=torch.int64, device=device)

    # -- categories -------------------------------------------------------------------------------
    @property
    def overflow_index(self) -> int:
        return self.bins + 2

    @property
    def nan_index(self) -> int:
        return self.bins + 3

    def _categorize(self, a: torch.Tensor, may_have_nan: bool) -> torch.Tensor:
        """Category (int32, same shape, in scratch slot 2) of each ``a = |x|``; zeros land in underflow.

        Zeros cannot be told from underflow cheaply here; ``add`` moves them using the caller's count.
        """
        a = a.to(torch.float32)
        p = scratch.get(1, a.shape, torch.float32, a.device)
        # zeros and denormals send log2 down a slow path (8-25x); every |x| <= lo lands in underflow
        # anyway, so lift them to half a bin below lo (position ~1.5: inside underflow, far from an edge)
        torch.clamp(a, min=self._floor, out=p).log2_()
        # the offset carries an extra +tol: then p is within tol of an edge exactly when frac(p) < 2 tol
        # (two passes instead of round/sub/abs/compare), and trunc(p) is unchanged away from edges
        torch.add(self._offset.to(a.device), p, alpha=self._scale2, out=p)  # one pass for * and +
        gap = scratch.get(2, a.shape, torch.float32, a.device)
        near = (torch.frac(p, out=gap) < 2 * self._tol).view(-1).nonzero().squeeze(1)  # rare
        p.clamp_(1, self.overflow_index)
        if may_have_nan:
            p.nan_to_num_(nan=float(self.nan_index))
        # truncation is the category: bin k spans positions (k + 2, k + 3]; the only element where
        # truncation and that half-open interval disagree sits on an integer, i.e. is "near" and fixed
        cat = gap.view(torch.int32).copy_(p)  # reuse slot 2; int32 bincounts ~3x faster than int64
        if near.numel():
            exact = torch.searchsorted(self.edges.to(a.device), a.reshape(-1)[near]) + 1
            cat.view(-1)[near] = exact.to(torch.int32)
        return cat

    def add(self, a: torch.Tensor, n_zero: int, may_have_nan: bool = True) -> None:
        """Count ``a = |x|`` (any shape); ``n_zero`` is the number of exact zeros in it."""
        cat = self._categorize(a, may_have_nan).view(-1)
        c = torch.bincount(cat, minlength=self.bins + 4).to(self.counts.device)
        c[0] += n_zero
        c[1] -= n_zero
        self.counts = self.counts + c  # out of place: may be an inference tensor

    # -- reading ------------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def valid(self) -> int:
        """Number of non-NaN elements counted (the denominator of densities and quantiles)."""
        return int(self.counts[: self.nan_index].sum())

    def snap(self, eps: float) -> tuple[int, float]:
        """Nearest edge to ``eps`` in log space: ``(k, E_k)``. ``eps`` must lie in ``[lo, hi]``."""
        if not (self.lo <= eps <= self.hi):
            raise ValueError(f"eps={eps} outside the histogram range [{self.lo}, {self.hi}]")
        k = round((math.log10(eps) - math.log10(self.lo)) * self._scale)
        k = min(max(k, 0), self.bins)
        return k, float(self.edges[k])

    def count_above(self, k: int) -> int:
        """Exact number of elements with ``|x| > E_k`` (+inf included, NaN excluded)."""
        return int(self.counts[2 + k : self.nan_index].sum())

    def quantile(self, q: float, abs_max: float, n_inf: int = 0) -> float | None:
        """``q``-quantile of |x| over non-NaN elements, interpolated inside its bin.

        Zeros give 0; inside the underflow bin the value is linear in ``[0, lo]``; inside a regular bin
        geometric between its edges; inside overflow geometric between ``hi`` and ``abs_max`` (the
        largest finite |x|). None when nothing was counted or the quantile falls on +inf.
        """
        valid = self.valid
        if valid == 0:
            return None
        counts = self.counts[: self.nan_index].to(torch.float64)
        cum = counts.cumsum(0)
        # first category whose cumulative count reaches the rank (rank > 0 skips empty leading ones)
        rank = max(min(max(q, 0.0), 1.0) * valid, 1e-9)
        i = int(torch.searchsorted(cum, torch.tensor([rank], dtype=torch.float64))[0])
        c, before = float(counts[i]), float(cum[i] - counts[i])
        frac = min(max((rank - before) / c, 0.0), 1.0)
        if i == 0:
            return 0.0
        if i == 1:
            return self.lo * frac
        if i < self.overflow_index:
            lo_e, hi_e = float(self.edges[i - 2]), float(self.edges[i - 1])
            return lo_e * (hi_e / lo_e) ** frac
        finite = c - n_inf
        if rank - before > finite:
            return None
        top = max(abs_max, self.hi)
        return self.hi * (top / self.hi) ** min(max((rank - before) / max(finite, 1), 0.0), 1.0)

    # -- merging / state ---------------------------------------------------------------------------
    def merge(self, other: LogHistogram) -> LogHistogram:
        """New histogram holding both counts; edges must be identical."""
        if (self.lo, self.hi, self.bins) != (other.lo, other.hi, other.bins):
            raise ValueError(
                f"cannot merge histograms with different edges: {(self.lo, self.hi, self.bins)} "
                f"vs {(other.lo, other.hi, other.bins)}"
            )
        out = LogHistogram(self.lo, self.hi, self.bins, device=self.counts.device)
        out.counts = self.counts + other.counts.to(self.counts.device)
        return out

    def compact(self) -> dict:
        """JSON-ready ``{lo, hi, bins, edges, zero, underflow, counts, overflow, nan}``."""
        c = self.counts.tolist()
        return {
            "lo": self.lo,
            "hi": self.hi,
            "bins": self.bins,
            "edges": self.edges.tolist(),
            "zero": c[0],
            "underflow": c[1],
            "counts": c[2 : self.overflow_index],
            "overflow": c[self.overflow_index],
            "nan": c[self.nan_index],
        }
