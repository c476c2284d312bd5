"""Settings of ``SiteStats`` (see ``actlab.activations.stats``); JSON round-trippable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch


@dataclass(frozen=True)
class StatsConfig:
    """Settings of ``SiteStats``; round-trips through JSON with ``to_dict`` / ``from_dict``.

    Example:
        >>> StatsConfig.from_dict(StatsConfig(sample_rows=8).to_dict()).sample_rows
        8
    """

    hist_lo: float = 1e-6  # log-spaced |x| histogram edges, lo..hi in `hist_bins` bins (+ zero,
    hist_hi: float = 1e4  # underflow, overflow and NaN categories)
    hist_bins: int = 200
    eps_grid: tuple[float, ...] = (0.0, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0)  # density |x| > eps; snapped
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)  # of |x|, from the histogram
    channel_eps: tuple[float, ...] = (0.0, 0.01, 0.1)  # per-channel |x| > eps counts (exact; 0 always in)
    cold_freq: float = 0.01  # "cold" channel: active (|x| > eps) on fewer than this fraction of tokens
    hot_freq: float = 0.5  # "hot" channel: active on more than this fraction of tokens
    top_frac: float = 0.2  # "top_share": share of all activations held by this most active channel fraction
    top_channels: int = 8  # channels listed by absmax in the summary
    topk_fracs: tuple[float, ...] = (0.01, 0.1, 0.3, 0.5)  # top-k mass, k = max(1, round(frac * d))
    sample_rows: int = 32  # tokens per update used by top-k mass and CETT (evenly strided)
    token_stride: int = 1  # use every token_stride-th token of each update for everything (1 = all: exact)
    cett_lo: float = 1e-4  # absolute CETT thresholds t: log-spaced cett_lo..cett_hi, cett_points points
    cett_hi: float = 1e2
    cett_points: int = 25
    cett_targets: tuple[float, ...] = (0.1, 0.2, 0.3)  # summary reports the sparsity at these CETT values

    def __post_init__(self) -> None:
        tup = {f.name for f in fields(self) if str(f.type).startswith("tuple")}
        for name in tup:  # JSON gives lists back
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        ch = tuple(sorted(set(self.channel_eps) | {0.0}))
        object.__setattr__(self, "channel_eps", ch)
        if any(e < 0 for e in self.eps_grid + ch):
            raise ValueError("eps values must be >= 0")
        bad = [e for e in self.eps_grid if e and not (self.hist_lo <= e <= self.hist_hi)]
        if bad:
            raise ValueError(f"eps_grid values {bad} lie outside the histogram range [hist_lo, hist_hi]")
        if not all(0 < f <= 1 for f in self.topk_fracs) or not all(0 <= q <= 1 for q in self.quantiles):
            raise ValueError("topk_fracs must be in (0, 1] and quantiles in [0, 1]")
        if self.sample_rows < 1 or self.token_stride < 1 or self.cett_points < 2:
            raise ValueError("need sample_rows >= 1, token_stride >= 1 and cett_points >= 2")
        if not 0 < self.cett_lo < self.cett_hi or not all(0 < v <= 1 for v in (self.top_frac, self.hot_freq)):
            raise ValueError("need 0 < cett_lo < cett_hi, 0 < top_frac <= 1 and 0 < hot_freq <= 1")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> StatsConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown StatsConfig keys: {sorted(unknown)}")
        return cls(**d)

    def cett_grid(self) -> torch.Tensor:
        """The absolute CETT thresholds t [cett_points], float64."""
        return torch.logspace(
            math.log10(self.cett_lo), math.log10(self.cett_hi), self.cett_points, dtype=torch.float64
        )
