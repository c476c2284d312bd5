"""Streaming, mergeable statistics of one activation site, global and per channel.

A hook hands ``SiteStats.update`` a tensor ``x`` [..., d]; it is flattened to [N, d] (N tokens) and folded
into bounded accumulators; raw activations are never kept. Two ``SiteStats`` over disjoint data merge into
the statistics of the concatenation (exact up to float error), so shards from processes or GPUs combine.

What is exact and what is estimated:

* moments (mean, var, skew, excess kurtosis; global and per channel), absmax, per-channel counts of
  ``|x| > eps`` for ``channel_eps``, the histogram and ``density`` at every ``eps_grid`` value: exact over
  all elements. ``eps_grid`` values other than 0 are *snapped* to the nearest histogram edge (the summary
  keys show the snapped value), which is what lets them be read exactly from the histogram.
* quantiles of |x|: interpolated inside one histogram bin (relative error below the bin width,
  ``(hi/lo)**(1/bins)``, 12 % with the defaults).
* top-k mass and the CETT curve: estimates on at most ``sample_rows`` evenly strided tokens per update
  (sorting every token would cost more than the forward pass). Merging sums the samples.
* ``token_stride > 1`` (default 1) turns everything into an estimate on every n-th token, for when
  profiling must be cheaper still.

NaN is counted (``nan``) and excluded everywhere else; ±inf is counted (``inf``), excluded from moments and
absmax, and counted as ``|x| > eps`` (histogram overflow). Densities and quantiles are over non-NaN elements.

Example:
    >>> import torch
    >>> cfg = StatsConfig()
    >>> a, b = SiteStats(4, cfg), SiteStats(4, cfg)
    >>> a.update(torch.randn(2, 8, 4)); b.update(torch.randn(16, 4))
    >>> s = a.merge(b).summary()
    >>> s["count"], sorted(s["density"])[:3]
    (128, ['0', '0.001', '0.01'])
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from actlab.activations import scratch
from actlab.activations.cett import CettCurve
from actlab.activations.histogram import LogHistogram
from actlab.activations.moments import Moments
from actlab.activations.stats_config import StatsConfig

__all__ = ["SiteStats", "StatsConfig", "sample_index"]


_MAX_ROWS = 2**24


def _key(v: float) -> str:
    return format(v, ".6g")


def _num(v: float | torch.Tensor) -> float | None:
    """JSON-safe float: None for NaN/inf (undefined statistics)."""
    v = float(v)
    return v if math.isfinite(v) else None


def sample_index(n: int, rows: int) -> torch.Tensor:
    """At most ``rows`` evenly strided, deterministic row indices out of ``n``."""
    if n <= rows:
        return torch.arange(n)
    return torch.arange(rows) * n // rows


class SiteStats:
    """Mergeable statistics of one activation site with ``dim`` channels (see the module docstring).

    ``down_weight`` [out, dim] is the weight that consumes this activation (the MLP down projection for a
    ``mlp.down_in`` site); when given, the CETT curve is accumulated too. It is held by reference and never
    saved. All state lives on the CPU; ``x`` may be on any device (only small reductions move).

    Example:
        >>> import torch
        >>> st = SiteStats(8, StatsConfig(), down_weight=torch.randn(4, 8))
        >>> st.update(torch.randn(3, 5, 8))
        >>> s = st.summary()
        >>> s["tokens"], len(s["cett"]["t"]), list(s["topk_mass"])
        (15, 25, ['0.01', '0.1', '0.3', '0.5'])
    """

    def __init__(
        self, dim: int, config: StatsConfig | None = None, down_weight: torch.Tensor | None = None
    ) -> None:
        self.dim = int(dim)
        self.config = config or StatsConfig()
        c = self.config
        self.moments = Moments.zeros((self.dim,))  # per channel, finite elements only
        self.hist = LogHistogram(c.hist_lo, c.hist_hi, c.hist_bins)
        self.tokens = 0
        self.n_inf = 0
        self.chan_absmax = torch.zeros(self.dim, dtype=torch.float64)  # finite |x| only
        self.chan_valid = torch.zeros(self.dim, dtype=torch.int64)  # non-NaN elements per channel
        self.chan_above = torch.zeros(len(c.channel_eps), self.dim, dtype=torch.int64)  # |x| > eps
        self.topk_sum = torch.zeros(len(c.topk_fracs), dtype=torch.float64)
        self.topk_tokens = 0
        self.cett: CettCurve | None = None
        if down_weight is not None:
            if down_weight.dim() != 2 or down_weight.shape[1] != self.dim:
                raise ValueError(f"down_weight must be [out, {self.dim}], got {tuple(down_weight.shape)}")
            self.cett = CettCurve(c.cett_grid(), down_weight)

    # -- accumulation --------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold in ``x`` [..., dim] (any float dtype, any device)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dimension {self.dim}, got shape {tuple(x.shape)}")
        x = x.detach().reshape(-1, self.dim)  # [N, d]
        if self.config.token_stride > 1:
            x = x[:: self.config.token_stride]
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        n = x.shape[0]
        if n == 0:
            return
        if n >= _MAX_ROWS:  # float32 counting below is exact only up to 2**24 per column
            for part in x.split(_MAX_ROWS // 2):
                self.update(part)
            return
        # a NaN or inf anywhere makes its column sum non-finite: one cheap pass picks the fast path
        col_sum = x.sum(0)  # [d]
        clean = bool(torch.isfinite(col_sum).all())
        a = torch.abs(x, out=scratch.get(0, x.shape, x.dtype, x.device))  # [N, d]
        if clean:
            finite = None
            absmax = a.amax(0)
            valid = torch.full((self.dim,), n, dtype=torch.int64)
        else:
            finite = torch.isfinite(x)
            nan = torch.isnan(x)
            absmax = torch.where(finite, a, 0).amax(0)
            valid = n - nan.sum(0).cpu()
            self.n_inf += int((~finite).sum() - nan.sum())
        batch = Moments.from_batch(x, finite, abs_max=float(absmax.max()), col_sum=col_sum if clean else None)
        self.moments = self.moments.merge(
            Moments(*(t.cpu() for t in (batch.n, batch.mean, batch.m2, batch.m3, batch.m4)))
        )
        self.chan_absmax = torch.maximum(self.chan_absmax, absmax.cpu().to(torch.float64))
        self.chan_valid = self.chan_valid + valid  # out of place: accumulators may be inference tensors
        # Per-channel counts: comparisons written as 0/1 float32 and summed in float32 are ~4x faster
        # than summing a bool tensor (which first casts it to int); exact while n < 2**24 (checked above).
        flag = scratch.get(1, x.shape, x.dtype, x.device)
        if clean:
            nonzero = torch.sign(a, out=flag).sum(0)  # [d]
        else:
            nonzero = torch.logical_and(x != 0, ~nan, out=flag).sum(0)
        above = [nonzero if e == 0 else torch.gt(a, e, out=flag).sum(0) for e in self.config.channel_eps]
        self.chan_above = self.chan_above + torch.stack(above).cpu().round().to(torch.int64)
        nonzero = int(nonzero.sum())
        n_zero = int(valid.sum()) - nonzero
        self.hist.add(a, n_zero=n_zero, may_have_nan=not clean)
        self.tokens += n

        rows = x[sample_index(n, self.config.sample_rows).to(x.device)]  # [m, d]
        self._update_topk(rows)
        if self.cett is not None and self.cett.weight is not None:
            self.cett.update(rows)

    def _update_topk(self, rows: torch.Tensor) -> None:
        a = rows[torch.isfinite(rows).all(1)].abs()  # [m, d]
        total = a.sum(1, dtype=torch.float64)  # [m] L1 mass per token
        ks = [self._k(f) for f in self.config.topk_fracs]
        a, total = a[total > 0], total[total > 0]
        if not a.shape[0]:
            return
        if a.device.type == "cpu":  # numpy sorts these few short rows ~10x faster than torch.topk
            srt = np.sort(a.numpy(), axis=1)[:, : -max(ks) - 1 : -1]  # [m, kmax], largest first
            top = torch.from_numpy(np.cumsum(srt, axis=1, dtype=np.float64))
        else:
            top = a.topk(max(ks), dim=1).values.to(torch.float64).cumsum(1)
        k = torch.tensor(ks, device=a.device)
        self.topk_sum = self.topk_sum + (top[:, k - 1] / total[:, None]).sum(0).cpu()
        self.topk_tokens += a.shape[0]

    def _k(self, frac: float) -> int:
        return min(self.dim, max(1, int(frac * self.dim + 0.5)))

    # -- merging ------------------------------------------------------------------------------------------
    def merge(self, other: SiteStats) -> SiteStats:
        """New ``SiteStats`` of both inputs' data; needs the same ``dim`` and config (CETT grid included)."""
        if self.dim != other.dim or self.config != other.config:
            raise ValueError("cannot merge SiteStats with different dim or config")
        if (self.cett is None) != (other.cett is None):
            raise ValueError("cannot merge SiteStats where only one side tracks CETT")
        out = SiteStats(self.dim, self.config)
        out.moments = self.moments.merge(other.moments)
        out.hist = self.hist.merge(other.hist)
        out.tokens = self.tokens + other.tokens
        out.n_inf = self.n_inf + other.n_inf
        out.chan_absmax = torch.maximum(self.chan_absmax, other.chan_absmax)
        out.chan_valid = self.chan_valid + other.chan_valid
        out.chan_above = self.chan_above + other.chan_above
        out.topk_sum = self.topk_sum + other.topk_sum
        out.topk_tokens = self.topk_tokens + other.topk_tokens
        if self.cett is not None and other.cett is not None:
            out.cett = self.cett.merge(other.cett)
        return out

    # -- reading ------------------------------------------------------------------------------------------
    def density(self, eps: float) -> float | None:
        """Fraction of non-NaN elements with ``|x| > eps`` (eps > 0 snapped to a histogram edge)."""
        valid = self.hist.valid
        if not valid:
            return None
        if eps == 0:
            return (valid - int(self.hist.counts[0])) / valid
        return self.hist.count_above(self.hist.snap(eps)[0]) / valid

    def quantile(self, q: float) -> float | None:
        """Histogram estimate of the ``q``-quantile of |x| (see ``LogHistogram.quantile``)."""
        return self.hist.quantile(q, float(self.chan_absmax.max()), self.n_inf)

    def histogram_edges(self) -> list[float]:
        """The ``hist_bins + 1`` edges (float32 values) of ``summary()["histogram"]["counts"]``."""
        return self.hist.edges.tolist()

    def channel_stats(self) -> dict[str, torch.Tensor]:
        """Per-channel tensors [dim]: count, mean, var, std, skew, kurtosis (excess), absmax, and
        ``freq`` [len(channel_eps), dim] = fraction of non-NaN tokens with ``|x| > eps``."""
        m = self.moments
        var = m.var()
        return {
            "count": m.n.clone(),
            "mean": m.mean.clone(),
            "var": var,
            "std": var.sqrt(),
            "skew": m.skew(),
            "kurtosis": m.kurtosis(),
            "absmax": self.chan_absmax.clone(),
            "freq": self.chan_above.to(torch.float64) / self.chan_valid.clamp(min=1),
        }

    def summary(self, per_channel: bool = False) -> dict:
        """JSON-ready summary; ``per_channel=True`` adds full per-channel lists. Undefined values are None."""
        c, g = self.config, self.moments.reduce()
        var = g.var()
        out: dict = {
            "dim": self.dim,
            "tokens": self.tokens,
            "elements": self.hist.total,
            "count": int(g.n),
            "nan": int(self.hist.counts[self.hist.nan_index]),
            "inf": self.n_inf,
            "mean": _num(g.mean),
            "var": _num(var),
            "std": _num(var.sqrt()),
            "skew": _num(g.skew()),
            "kurtosis": _num(g.kurtosis()),
            "absmax": _num(self.chan_absmax.max()) if int(g.n) else None,
        }
        eps = [0.0 if e == 0 else self.hist.snap(e)[1] for e in c.eps_grid]
        out["density"] = {_key(s): self.density(e) for e, s in zip(c.eps_grid, eps, strict=True)}
        out["quantiles"] = {_key(q): self.quantile(q) for q in c.quantiles}
        out["histogram"] = self.hist.compact()
        t = self.topk_tokens
        out["topk_mass"] = {
            _key(f): (float(s) / t if t else None) for f, s in zip(c.topk_fracs, self.topk_sum, strict=True)
        }
        out["topk_tokens"] = t
        out["channels"] = self._channel_summary(per_channel)
        out["cett"] = self._cett_summary()
        return out

    def neuron_summary(self, eps: float = 0.0, frequency_sorted: bool = False) -> dict:
        """Hot/cold/dead channels at one ``eps`` of ``config.channel_eps``.

        A channel is *active* on a token when ``|x| > eps``; ``freq`` is its fraction of active tokens.
        ``dead``: never active over all tokens. ``cold``: active but ``freq < cold_freq``. ``hot``:
        ``freq > hot_freq``. ``top_share``: the fraction of all activations (active channel-token pairs)
        that fall in the ``top_frac`` most active channels (``top_frac`` when uniform, 1.0 when
        concentrated). ``frequency_sorted=True`` adds every channel's ``freq``, descending (rank plots).
        """
        c = self.config
        if eps not in c.channel_eps:
            raise ValueError(f"eps={eps} is not one of channel_eps {c.channel_eps}")
        i = c.channel_eps.index(eps)
        cnt = self.chan_above[i]
        f = cnt.to(torch.float64) / self.chan_valid.clamp(min=1)  # [d]
        total = int(cnt.sum())
        top_n = max(1, math.ceil(c.top_frac * self.dim))
        qs = torch.quantile(f, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=f.dtype)).tolist()
        out = {
            "eps": eps,
            "channels": self.dim,
            "dead": int((cnt == 0).sum()),
            "cold": int(((cnt > 0) & (f < c.cold_freq)).sum()),
            "hot": int((f > c.hot_freq).sum()),
            "top_frac": c.top_frac,
            "top_share": int(cnt.topk(top_n).values.sum()) / total if total else None,
            "freq": dict(zip(("min", "p10", "median", "p90", "max"), qs, strict=True)),
        }
        if frequency_sorted:
            out["frequency_sorted"] = f.sort(descending=True).values.tolist()
        return out

    def _channel_summary(self, per_channel: bool) -> dict:
        c = self.config
        top = self.chan_absmax.topk(min(c.top_channels, self.dim))
        out: dict = {
            "by_eps": {_key(e): self.neuron_summary(e) for e in c.channel_eps},
            "top_absmax": [[int(i), float(v)] for v, i in zip(top.values, top.indices, strict=True)],
        }
        if per_channel:
            cs = self.channel_stats()
            out["per_channel"] = {
                k: [_num(v) for v in cs[k].tolist()] for k in ("mean", "var", "kurtosis", "absmax")
            }
            out["per_channel"]["freq"] = {
                _key(e): f.tolist() for e, f in zip(c.channel_eps, cs["freq"], strict=True)
            }
        return out

    def _cett_summary(self) -> dict | None:
        cc = self.cett
        if cc is None:
            return None
        return {
            "t": cc.t.tolist(),
            "cett": [_num(v) for v in cc.mean_cett().tolist()],
            "sparsity": [_num(v) for v in cc.mean_sparsity().tolist()],
            "tokens": cc.tokens,
            "sparsity_at_cett": {_key(tg): cc.sparsity_at(tg) for tg in self.config.cett_targets},
        }

    # -- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat dict of CPU tensors (safetensors-friendly); the config travels as UTF-8 JSON bytes."""
        cfg = json.dumps(self.config.to_dict(), sort_keys=True).encode()
        state = {
            "config_json": torch.tensor(list(cfg), dtype=torch.uint8),
            "tokens": torch.tensor(self.tokens),
            "n_inf": torch.tensor(self.n_inf),
            "hist.counts": self.hist.counts.clone(),
            "chan.absmax": self.chan_absmax.clone(),
            "chan.valid": self.chan_valid.clone(),
            "chan.above": self.chan_above.clone(),
            "topk.sum": self.topk_sum.clone(),
            "topk.tokens": torch.tensor(self.topk_tokens),
            **self.moments.state("moments."),
        }
        if self.cett is not None:
            state.update(self.cett.state("cett."))
        return state

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], down_weight: torch.Tensor | None = None
    ) -> SiteStats:
        """Inverse of ``state_dict``; pass ``down_weight`` to keep updating the CETT curve."""
        config = StatsConfig.from_dict(json.loads(bytes(state["config_json"].tolist()).decode()))
        dim = int(state["moments.n"].shape[0])
        out = cls(dim, config)
        if tuple(state["hist.counts"].shape) != tuple(out.hist.counts.shape) or tuple(
            state["chan.above"].shape
        ) != tuple(out.chan_above.shape):
            raise ValueError("state shapes do not match its config")
        out.moments = Moments.from_state(state, "moments.")
        out.hist.counts = state["hist.counts"].to(torch.int64).clone()
        out.tokens, out.n_inf = int(state["tokens"]), int(state["n_inf"])
        out.chan_absmax = state["chan.absmax"].to(torch.float64).clone()
        out.chan_valid = state["chan.valid"].to(torch.int64).clone()
        out.chan_above = state["chan.above"].to(torch.int64).clone()
        out.topk_sum = state["topk.sum"].to(torch.float64).clone()
        out.topk_tokens = int(state["topk.tokens"])
        if "cett.t" in state:
            out.cett = CettCurve.from_state(state, "cett.", down_weight)
        return out
