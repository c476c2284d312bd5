"""Neuron records: top-activating contexts, quantile samples, moments and frequency of every channel.

``record_neurons`` runs the model once over token windows with a read-only hook per site and folds each
activation tensor into a :class:`NeuronRecords`; raw activations are never kept, memory is bounded by
``n × (2k + histogram bins)`` numbers plus ``sample_tokens × n``. Any ``[tokens, n]`` tensor can be fed
with :meth:`NeuronRecords.update` (SAE latents, a probe's outputs).

What each field is, and how exact:

* **top / bottom K** (value, window, position): exact. The order is total: value descending (ascending
  for bottom), ties broken by the earlier token ``(window, position)``; the brute-force reference is a
  stable sort over tokens in ``(window, position)`` order. Within a batch ``torch.topk`` finds K + 1
  candidates; columns whose (K+1)-th value equals the K-th (a tie across the cut) are redone with a
  stable sort, then batch and running top-K merge in the same total order.
* **moments** (count, mean, M2 → std), **min / max**, **frequency** of ``|a| > eps`` at every
  ``channel_eps`` of ``actlab profile`` (0, 0.01, 0.1): exact up to float error; batches combine by
  Chan's pairwise formula. ``.freq`` reads one of them, ``freq_eps`` (0 for ReLU-like functions, whose
  zeros are exact, else profile's neuron threshold 0.01).
* **histogram**: fixed signed log-spaced edges shared by every neuron (``±hist_lo .. ±hist_hi``,
  ``hist_bins_per_decade``), plus ``[-lo, 0)``, ``[0, lo]`` and the two overflow bins (bins are closed on
  the side away from zero; ``-0.0`` counts below zero). Counts are exact; a value within float rounding
  of an edge may land in the bin next to it (the same one in every run).
* **quantile samples**: a *token* sample shared by all neurons: the ``sample_tokens`` tokens with the
  smallest 64-bit hash of ``(window, position)`` (a uniform sample, deterministic, and the merge of two
  shards' samples is the sample of the whole). For each quantile ``q`` the sampled tokens nearest to the
  sample's ``q``-quantile are returned; the quantile itself is a sample estimate (binomial error).

Activations must be finite: a batch holding NaN or inf raises :class:`RecordsError` naming the site.
Records of two shards (``window_offset`` set to each shard's first window) merge into the records of all.

Example:
    >>> import actlab, torch
    >>> from actlab.interp.records import record_neurons
    >>> model, tok = actlab.load_model("random:tiny-llama")
    >>> recs = record_neurons(model, torch.randint(3, 500, (4, 16)), "layers.0.mlp.act_out", k=3, progress=False)
    >>> r = recs["layers.0.mlp.act_out"]
    >>> r.n, r.count, len(r.top(5)), r.top(5)[0].value == float(r.max[5])
    (128, 64, 3, True)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from actlab.activations.stats_config import StatsConfig

__all__ = ["Context", "NeuronRecords", "RecordsConfig", "RecordsError", "load_records", "save_records",
           "token_hash"]  # record_neurons / context_activations: see __getattr__ at the end


class RecordsError(ValueError):
    """Neuron records cannot be made or read as asked; the message names the argument to change."""


@dataclass(frozen=True)
class Context:
    """One recorded token: the neuron's ``value`` there, the ``window`` (row index into the windows the
    records were made from, plus any ``window_offset``) and the ``position`` inside that window."""

    value: float
    window: int
    position: int

    def to_dict(self) -> dict:
        return asdict(self)


FORMAT = "actlab.neuron_records/1"
_POS_BITS = 24  # token id = window << 24 | position: positions below 16M
_NO_TOKEN = torch.iinfo(torch.int64).max  # padding of a top-K not yet full: sorts after every token


@dataclass(frozen=True)
class RecordsConfig:
    """Settings of :class:`NeuronRecords`; records merge only with equal configs. JSON round-trippable."""

    k: int = 20  # top (and bottom) contexts kept per neuron
    bottom: bool = True  # keep the bottom-k too
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    samples_per_quantile: int = 2
    sample_tokens: int = 256  # the shared uniform token sample quantile samples come from
    channel_eps: tuple[float, ...] = StatsConfig().channel_eps  # frequency of |a| > eps, as profile counts
    freq_eps: float = 0.01  # the eps `.freq` reads (one of channel_eps)
    hist_lo: float = 1e-3
    hist_hi: float = 1e3
    hist_bins_per_decade: int = 8

    def __post_init__(self) -> None:
        for name in ("quantiles", "channel_eps"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.k <= 0:
            raise RecordsError(f"k must be a positive number of contexts per neuron (got {self.k})")
        if self.freq_eps not in self.channel_eps:
            raise RecordsError(f"freq_eps={self.freq_eps} is not one of channel_eps {self.channel_eps}")
        if not all(0 <= q <= 1 for q in self.quantiles) or self.samples_per_quantile < 0:
            raise RecordsError("quantiles must lie in [0, 1] and samples_per_quantile be >= 0")
        if self.sample_tokens < 0 or not 0 < self.hist_lo < self.hist_hi or self.hist_bins_per_decade < 1:
            raise RecordsError("need sample_tokens >= 0, 0 < hist_lo < hist_hi and hist_bins_per_decade >= 1")

    @property
    def hist_bins(self) -> int:
        """Log bins per sign between ``hist_lo`` and ``hist_hi``."""
        return max(1, round(math.log10(self.hist_hi / self.hist_lo) * self.hist_bins_per_decade))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> RecordsConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise RecordsError(f"unknown RecordsConfig keys: {sorted(unknown)}")
        return cls(**d)


def _u64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_M1, _M2, _GOLD = _u64(0xBF58476D1CE4E5B9), _u64(0x94D049BB133111EB), _u64(0x9E3779B97F4A7C15)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    return (z >> s) & ((1 << (64 - s)) - 1)  # logical shift on int64


def token_hash(tok: torch.Tensor) -> torch.Tensor:
    """splitmix64 of int64 token ids: a bijection, so sample keys never tie (int64 products wrap)."""
    z = tok + _GOLD
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def _ordered_top(vals: torch.Tensor, toks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``vals`` [n, m], the first ``k`` in (value desc, token asc) order. ``toks`` [n, m]."""
    o = toks.argsort(dim=1)  # tokens are unique per row (padding aside)
    vals, toks = vals.gather(1, o), toks.gather(1, o)
    o = vals.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return vals.gather(1, o), toks.gather(1, o)


def _batch_top(
    x: torch.Tensor, tok: torch.Tensor, k: int, largest: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top (or bottom) ``k`` per column of ``x`` [N, n] (ties: earlier token): [n, k] values, tokens."""
    if x.shape[0] <= k:
        idx = torch.arange(x.shape[0])[:, None].expand(-1, x.shape[1])  # every token is a candidate
    else:
        # one more than needed: where the (k+1)-th equals the k-th, topk chose among tied values
        top = torch.topk(x, k + 1, dim=0, largest=largest)  # [k + 1, n]
        idx = top.indices[:k]
        tied = (top.values[k] == top.values[k - 1]).nonzero().squeeze(1)
        if tied.numel():
            order = tok.argsort()  # a stable sort in token order, then by value
            sub = x[:, tied][order]  # [N, t]
            pick = sub.sort(dim=0, descending=largest, stable=True).indices[:k]  # [k, t]
            idx = idx.clone()
            idx[:, tied] = order[pick]
    vals = x.gather(0, idx)
    return vals.t(), tok[idx].t()


class NeuronRecords:
    """Streaming, mergeable records of ``n`` channels of one site (see the module docstring).

    Example:
        >>> r = NeuronRecords("sae.latents", 16, RecordsConfig(k=4))
        >>> acts = torch.relu(torch.randn(100, 16))
        >>> r.update(acts, window_ids=torch.arange(100) // 10, positions=torch.arange(100) % 10)
        >>> r.count, r.top(0)[0].value == float(acts[:, 0].max())
        (100, True)
    """

    def __init__(self, site: str, n: int, config: RecordsConfig | None = None) -> None:
        self.site, self.n = str(site), int(n)
        self.config = c = config or RecordsConfig()
        self.count = 0
        self.top_v = torch.full((n, 0), float("-inf"))  # [n, <=k] values, descending
        self.top_t = torch.full((n, 0), _NO_TOKEN)  # [n, <=k] token ids (window << 24 | position)
        self.bot_v, self.bot_t = self.top_v.clone(), self.top_t.clone()  # bottom-k of the negated values
        self.mean = torch.zeros(n, dtype=torch.float64)
        self.m2 = torch.zeros(n, dtype=torch.float64)
        self.max = torch.full((n,), float("-inf"))
        self.min = torch.full((n,), float("inf"))
        self.above = torch.zeros(len(c.channel_eps), n, dtype=torch.int64)  # |a| > eps counts
        self.hist_counts = torch.zeros(n, 2 * c.hist_bins + 4, dtype=torch.int64)
        self.sample_key = torch.zeros(0, dtype=torch.int64)  # [r] hash of the sampled tokens, ascending
        self.sample_tok = torch.zeros(0, dtype=torch.int64)
        self.sample_val = torch.zeros(0, n)  # [r, n]

    @classmethod
    def from_activations_stream(
        cls, site: str, stream: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        config: RecordsConfig | None = None,
    ) -> NeuronRecords:
        """Records of a stream of ``(acts [tokens, n], window_ids [tokens], positions [tokens])`` batches,
        e.g. ``actlab.interp.sae_train.latent_activations(model, sae, windows)`` for SAE latents.

        Example:
            >>> stream = [(torch.rand(6, 3), torch.zeros(6), torch.arange(6))]
            >>> NeuronRecords.from_activations_stream("latents", stream, RecordsConfig(k=2)).count
            6
        """
        out: NeuronRecords | None = None
        for acts, window_ids, positions in stream:
            if out is None:
                out = cls(site, acts.shape[-1], config)
            out.update(acts, window_ids, positions)
        if out is None:
            raise RecordsError(f"{site}: the activation stream yielded no batch; pass at least one")
        return out

    # -- accumulation --------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, acts: torch.Tensor, window_ids: torch.Tensor, positions: torch.Tensor) -> None:
        """Fold in ``acts`` [tokens, n] (or [..., n]) taken at ``window_ids`` / ``positions`` [tokens].

        Every (window, position) must be new to these records (the top-K and the token sample rely on
        unique tokens). Any float dtype, any device: the state lives on the CPU.
        """
        x = acts.detach().reshape(-1, acts.shape[-1])
        if x.shape[1] != self.n:
            raise RecordsError(f"{self.site}: expected {self.n} channels, got shape {tuple(acts.shape)}")
        if x.dtype != torch.float32:
            x = x.float()
        x = x.cpu()
        w, p = window_ids.reshape(-1).cpu().long(), positions.reshape(-1).cpu().long()
        if not w.shape[0] == p.shape[0] == x.shape[0]:
            raise RecordsError(f"{self.site}: {x.shape[0]} tokens but {w.shape[0]} window ids, {p.shape[0]} positions")
        if x.shape[0] == 0:
            return
        if bool((p < 0).any() | (p >= 1 << _POS_BITS).any() | (w < 0).any()):
            raise RecordsError(f"{self.site}: positions must lie in [0, 2**{_POS_BITS}) and windows be >= 0")
        tok = (w << _POS_BITS) | p  # [N]
        n_tok = x.shape[0]
        mean = x.sum(0) / n_tok  # [n]
        if not bool(torch.isfinite(mean).all()):
            raise RecordsError(
                f"{self.site}: activations hold NaN or inf; records need finite values (load the model in float32)"
            )
        buf = torch.sub(x, mean)  # [N, n] scratch; (torch.var_mean is ~10x slower on CPU over dim 0)
        m2 = buf.square_().sum(0)
        self._merge_moments(n_tok, mean.double(), m2.double())
        self.max, self.min = torch.maximum(self.max, x.amax(0)), torch.minimum(self.min, x.amin(0))
        a = x.abs()
        # counts as 0/1 floats summed in float32: ~10x faster than summing bools, exact below 2**24 rows
        self.above = self.above + torch.stack(
            [torch.gt(a, e, out=buf).sum(0) for e in self.config.channel_eps]
        ).round().long()
        self._add_hist(x, a, buf)
        k = self.config.k
        v, t = _batch_top(x, tok, k)
        self.top_v, self.top_t = _ordered_top(torch.cat([self.top_v, v], 1), torch.cat([self.top_t, t], 1), k)
        if self.config.bottom:
            v, t = _batch_top(x, tok, k, largest=False)
            self.bot_v, self.bot_t = _ordered_top(torch.cat([self.bot_v, -v], 1), torch.cat([self.bot_t, t], 1), k)
        self._add_sample(x, tok)

    def _merge_moments(self, nb: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        na = self.count
        n = na + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + delta * delta * (na * nb / n)
        self.count = n

    def _add_hist(self, x: torch.Tensor, a: torch.Tensor, q: torch.Tensor) -> None:
        """Count ``x`` (``a = |x|``) into the signed bins, using ``q`` [N, n] as scratch."""
        c = self.config
        b, width = c.hist_bins, 2 * c.hist_bins + 4
        per_octave = b / math.log10(c.hist_hi / c.hist_lo) * math.log10(2.0)
        # |a| in (E_j, E_j+1] has q = log2(|a| / lo) * bins per octave in (j, j+1]: ceil(q) is its bin (0 up
        # to lo, b + 1 above hi). Clamping |a| to [0.999 lo, hi * half a bin] first keeps log2 finite and q
        # inside [0, b + 1] without a second clamp (ceil of a small negative q is 0).
        torch.clamp(a, c.hist_lo * 0.999, c.hist_hi * 10 ** (0.5 / c.hist_bins_per_decade), out=q).log2_()
        torch.add(torch.tensor(-math.log2(c.hist_lo) * per_octave), q, alpha=per_octave, out=q).ceil_()
        # signed category: b + 2 + q at and above zero, b + 1 - q below: copysign(q + 0.5, x) + b + 1.5
        q.add_(0.5).copysign_(x)
        offsets = torch.arange(self.n, dtype=torch.float64) * width + (b + 1.5)  # one bincount for all
        if self.n * width < 2**24:  # float32 holds these integers exactly
            cat = q.add_(offsets.float()).to(torch.int32)
        else:
            cat = (q.to(torch.float64) + offsets).to(torch.int64)
        flat = torch.bincount(cat.view(-1), minlength=self.n * width)
        self.hist_counts = self.hist_counts + flat.view(self.n, width)

    def _add_sample(self, x: torch.Tensor, tok: torch.Tensor) -> None:
        r = self.config.sample_tokens
        if r == 0:
            return
        key = token_hash(tok)
        best = key.argsort()[:r]  # only the batch's r smallest can enter
        keys = torch.cat([self.sample_key, key[best]])
        order = keys.argsort()[:r]
        self.sample_key = keys[order]
        self.sample_tok = torch.cat([self.sample_tok, tok[best]])[order]
        self.sample_val = torch.cat([self.sample_val, x[best]])[order]

    # -- merging ------------------------------------------------------------------------------------------
    def merge(self, other: NeuronRecords) -> NeuronRecords:
        """Records of both inputs' tokens (which must be disjoint); same site width and config."""
        if self.n != other.n or self.config != other.config:
            raise RecordsError(f"cannot merge records of {self.site} ({self.n}) and {other.site} ({other.n}) "
                               "with different widths or configs")
        out = NeuronRecords(self.site, self.n, self.config)
        out.count, out.mean, out.m2 = self.count, self.mean.clone(), self.m2.clone()
        if other.count:
            out._merge_moments(other.count, other.mean, other.m2)
        out.max, out.min = torch.maximum(self.max, other.max), torch.minimum(self.min, other.min)
        out.above = self.above + other.above
        out.hist_counts = self.hist_counts + other.hist_counts
        k = self.config.k
        out.top_v, out.top_t = _ordered_top(torch.cat([self.top_v, other.top_v], 1),
                                            torch.cat([self.top_t, other.top_t], 1), k)
        out.bot_v, out.bot_t = _ordered_top(torch.cat([self.bot_v, other.bot_v], 1),
                                            torch.cat([self.bot_t, other.bot_t], 1), k)
        keys = torch.cat([self.sample_key, other.sample_key])
        order = keys.argsort()[: self.config.sample_tokens]
        out.sample_key = keys[order]
        out.sample_tok = torch.cat([self.sample_tok, other.sample_tok])[order]
        out.sample_val = torch.cat([self.sample_val, other.sample_val])[order]
        return out

    # -- reading ------------------------------------------------------------------------------------------
    def _check(self, i: int) -> int:
        if not 0 <= int(i) < self.n:
            raise RecordsError(f"neuron {i} out of range: {self.site} has {self.n} channels (0..{self.n - 1})")
        return int(i)

    @staticmethod
    def _contexts(vals: torch.Tensor, toks: torch.Tensor, sign: float = 1.0) -> list[Context]:
        mask = (1 << _POS_BITS) - 1
        return [Context(sign * float(v), int(t) >> _POS_BITS, int(t) & mask)
                for v, t in zip(vals.tolist(), toks.tolist(), strict=True) if t != _NO_TOKEN]

    def top(self, i: int) -> list[Context]:
        """Neuron ``i``'s top-K contexts, value descending (ties: earlier token first)."""
        i = self._check(i)
        return self._contexts(self.top_v[i], self.top_t[i])

    def bottom(self, i: int) -> list[Context]:
        """Neuron ``i``'s bottom-K contexts, value ascending (empty when ``config.bottom`` is off)."""
        i = self._check(i)
        return self._contexts(self.bot_v[i], self.bot_t[i], -1.0)

    def quantile(self, q: float) -> torch.Tensor:
        """Per-neuron ``q``-quantile [n] estimated from the shared token sample (NaN before any token)."""
        if self.sample_val.shape[0] == 0:
            return torch.full((self.n,), float("nan"))
        return torch.quantile(self.sample_val, q, dim=0)

    def quantile_samples(self, i: int) -> dict[float, list[Context]]:
        """For each of ``config.quantiles``: the sampled tokens whose value of neuron ``i`` is nearest to its
        (sample) quantile, nearest first (ties: smaller hash, i.e. sample order)."""
        i = self._check(i)
        v = self.sample_val[:, i]
        out: dict[float, list[Context]] = {}
        m = min(self.config.samples_per_quantile, v.shape[0])
        for q in self.config.quantiles:
            if not v.numel():
                out[q] = []
                continue
            target = torch.quantile(v, q)
            pick = (v - target).abs().sort(stable=True).indices[:m]
            out[q] = self._contexts(v[pick], self.sample_tok[pick])
        return out

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation per neuron [n] (float64)."""
        return (self.m2 / max(self.count, 1)).sqrt()

    @property
    def freqs(self) -> torch.Tensor:
        """Fraction of tokens with ``|a| > eps`` [len(channel_eps), n] (float64)."""
        return self.above.double() / max(self.count, 1)

    @property
    def freq(self) -> torch.Tensor:
        """Fraction of tokens with ``|a| > config.freq_eps`` [n] (float64)."""
        return self.freqs[self.config.channel_eps.index(self.config.freq_eps)]

    def hist_edges(self) -> torch.Tensor:
        """The shared signed edges [2 * hist_bins + 5]: ``-inf, -hi, ..., -lo, 0, lo, ..., hi, inf``."""
        c = self.config
        pos = c.hist_lo * (c.hist_hi / c.hist_lo) ** (torch.arange(c.hist_bins + 1, dtype=torch.float64) / c.hist_bins)
        inf = torch.tensor([float("inf")], dtype=torch.float64)
        return torch.cat([-inf, -pos.flip(0), torch.zeros(1, dtype=torch.float64), pos, inf])

    def hist(self, i: int) -> tuple[list[float], list[int]]:
        """Neuron ``i``'s histogram ``(edges, counts)``, ``len(edges) == len(counts) + 1``, trimmed to the bins
        from its smallest to its largest value; the outer edges are the observed min and max (finite)."""
        i = self._check(i)
        counts = self.hist_counts[i]
        nz = counts.nonzero().squeeze(1)
        if not nz.numel():
            return [], []
        a, b = int(nz[0]), int(nz[-1])
        edges = self.hist_edges()[a : b + 2].clone()
        # the min lies in bin a and the max in bin b; min() / max() guard a value binned next to an edge
        edges[0] = min(float(self.min[i]), float(edges[1]))
        edges[-1] = max(float(self.max[i]), float(edges[-2]))
        return edges.tolist(), counts[a : b + 1].tolist()

    @property
    def layer(self) -> int | None:
        m = re.match(r"layers\.(\d+)\.", self.site)
        return int(m.group(1)) if m else None

    def summary_rows(self) -> list[dict[str, Any]]:
        """One plain dict per neuron: site, layer, index, max, min, mean, std, freq (for tables)."""
        cols = [t.tolist() for t in (self.max, self.min, self.mean, self.std, self.freq)]
        return [
            {"site": self.site, "layer": self.layer, "index": j, "max": mx, "min": mn, "mean": me, "std": sd, "freq": f}
            for j, (mx, mn, me, sd, f) in enumerate(zip(*cols, strict=True))
        ]

    # -- state --------------------------------------------------------------------------------------------
    _TENSORS = ("top_v", "top_t", "bot_v", "bot_t", "mean", "m2", "max", "min", "above", "hist_counts",
                "sample_key", "sample_tok", "sample_val")

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "site": self.site, "n": self.n, "count": self.count,
                "config": self.config.to_dict()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat dict of CPU tensors (safetensors-friendly); the metadata travels as UTF-8 JSON bytes."""
        meta = json.dumps(self.meta(), sort_keys=True).encode()
        return {"meta_json": torch.tensor(list(meta), dtype=torch.uint8),
                **{k: getattr(self, k).clone().contiguous() for k in self._TENSORS}}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> NeuronRecords:
        """Inverse of :meth:`state_dict`."""
        meta = json.loads(bytes(state["meta_json"].tolist()).decode())
        if meta.get("format") != FORMAT:
            raise RecordsError(f"not neuron records (format {meta.get('format')!r}, expected {FORMAT!r})")
        out = cls(meta["site"], meta["n"], RecordsConfig.from_dict(meta["config"]))
        out.count = int(meta["count"])
        for k in cls._TENSORS:
            ref = getattr(out, k)
            axis = {"above": 1, "sample_val": 1, "sample_key": None, "sample_tok": None}.get(k, 0)
            if state[k].dim() != ref.dim() or (axis is not None and state[k].shape[axis] != out.n):
                raise RecordsError(f"records state {k!r} has shape {tuple(state[k].shape)}, not matching n={out.n}")
            setattr(out, k, state[k].to(ref.dtype).clone())
        return out

    def save(self, path: str | Path) -> Path:
        """Write ``records.json`` + ``records.safetensors`` into directory ``path`` (no pickle)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        state.pop("meta_json")
        save_file(state, str(path / "records.safetensors"), metadata={"format": FORMAT})
        (path / "records.json").write_text(json.dumps(self.meta(), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> NeuronRecords:
        """Read what :meth:`save` wrote."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            meta = (path / "records.json").read_text()
            state = load_file(str(path / "records.safetensors"))
        except (OSError, ValueError) as e:
            raise RecordsError(f"cannot read neuron records from {path}: {e}") from e
        state["meta_json"] = torch.tensor(list(meta.encode()), dtype=torch.uint8)
        return cls.from_state_dict(state)


def save_records(records: dict[str, NeuronRecords], path: str | Path) -> Path:
    """Save several sites' records, one sub-directory per site (named by the site), into ``path``."""
    path = Path(path)
    for name, r in records.items():
        r.save(path / name)
    (path / "sites.json").write_text(json.dumps(list(records), indent=1) + "\n")
    return path


def load_records(path: str | Path) -> dict[str, NeuronRecords]:
    """Inverse of :func:`save_records`."""
    path = Path(path)
    try:
        names = json.loads((path / "sites.json").read_text())
    except (OSError, ValueError) as e:
        raise RecordsError(f"no neuron records in {path} (sites.json unreadable: {e})") from e
    return {n: NeuronRecords.load(path / n) for n in names}


def __getattr__(name: str) -> Any:
    # the functions that run the model live in records_context (which imports this module); they are
    # reachable from here too, resolved on first use so neither module imports the other at load time
    if name in ("record_neurons", "context_activations", "one_site"):
        from actlab.interp import records_context

        return getattr(records_context, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
